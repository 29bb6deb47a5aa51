"""Classic stateful eviction baselines, part one: GDSF and ARC (S3-FIFO and SIEVE are in
``policies.queue_eviction``).

Each is a ``StatefulEviction``: the cache reports its events to the policy's ``EvictionMemory``
and asks ``victim_order`` for the order to evict in. Sizes are in the unit the cache counts its
capacity in (1 per entry for a cache of slots), so with unit sizes each algorithm is the paper's.

Keys the memory never saw inserted (a store that loaded them before the memory existed) are
ranked first by every memory here, in the caller's order: they carry no history to protect them.
A hit on such a key registers it as a new entry of size 1.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import ClassVar

from policies.cost_aware import DEFAULT_LOAD_COST_S
from policies.eviction import EVICTION, EvictionMemory, StatefulEviction, check_capacity

UNKNOWN_KIND = -1  # kind given to an entry first seen through a hit


def arrange(keys: Sequence[Hashable], resident: Collection[Hashable], ranked: Iterable[Hashable]) -> list[Hashable]:
    """``keys`` in victim order: those the memory does not hold first (caller's order), then the
    memory's own order ``ranked`` (best victim first) restricted to ``keys``. Each key once."""
    wanted = set(keys)
    out = list(dict.fromkeys(k for k in keys if k not in resident))
    out += [k for k in ranked if k in wanted]
    return out


_FIXED_BITS = 1074  # 2**-1074 is the smallest float: every float is an integer in these units


def _fixed(x: float) -> int:
    """``x`` exactly, as an integer count of 2**-1074."""
    n, d = float(x).as_integer_ratio()  # d is a power of two, at most 2**1074
    return n * ((1 << _FIXED_BITS) // d)


class GDSFMemory(EvictionMemory):
    """GDSF's state: the inflation value L and, per entry, its frequency F, cost / size and the
    access counter of its latest access (the recency tie-break).

    H and L are exact integers (units of 2**-1074), not floats: with floats, L + F x v rounds,
    and ties that are exact when every entry has the same cost / size v (H = integer x v) break
    by rounding, differently for different units. Exact sums keep the order independent of the
    unit: a store reporting measured seconds and bytes and a simulator reporting per-kind
    constants and slots evict alike (tests/unit/test_parity_store_vs_simulator.py).
    """

    def __init__(self, default_cost: dict[int, float]) -> None:
        self._inflation = 0  # L, fixed point
        self._default_cost = default_cost
        self._h: dict[Hashable, int] = {}  # priority H = L + F * cost / size, fixed point
        self._entry: dict[Hashable, list] = {}  # key -> [F, cost / size (fixed), tick of latest access]
        self._tick = 0

    @property
    def inflation(self) -> float:
        return self._inflation / (1 << _FIXED_BITS)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entry

    def priority_of(self, key: Hashable) -> float:
        return self._h[key] / (1 << _FIXED_BITS)

    def on_hit(self, key: Hashable, now: float) -> None:
        e = self._entry.get(key)
        if e is None:  # never saw it inserted: a new entry worth nothing beyond the inflation
            self.on_insert(key, UNKNOWN_KIND, 1.0, 0.0, now)
            return
        self._tick += 1
        e[0] += 1
        e[2] = self._tick
        self._h[key] = self._inflation + e[0] * e[1]

    def on_insert(self, key: Hashable, kind: int, size: float, cost: float | None, now: float,
                  prefetch: bool = False) -> None:
        if not size > 0:
            raise ValueError(f"gdsf: entry {key!r} has size {size}; sizes must be > 0")
        if cost is None:  # the kind's default load time; an unknown kind takes the nearest kind's
            table = self._default_cost
            cost = table[kind] if kind in table else table[min(table, key=lambda k: abs(k - kind))]
        self._tick += 1
        value = _fixed(cost / size)
        self._entry[key] = [1, value, self._tick]  # F = 1 for a demand load and a prefetch alike
        self._h[key] = self._inflation + value

    def on_evict(self, key: Hashable, now: float) -> None:
        h = self._h.pop(key, None)
        if h is None:
            return
        del self._entry[key]
        # L = H of the evicted entry. In the paper's order that H is the minimum, so L never falls;
        # max() keeps it so when the cache evicts out of order (a pinned minimum was skipped).
        self._inflation = max(self._inflation, h)

    def victim_order(self, keys: Sequence[Hashable]) -> list[Hashable]:
        entry, h = self._entry, self._h
        known = sorted((k for k in set(keys) if k in entry), key=lambda k: (h[k], entry[k][2]))
        return arrange(keys, entry, known)


@EVICTION.register("gdsf")
class GDSF(StatefulEviction):
    """GreedyDual-Size-Frequency (L. Cherkasova, "Improving WWW Proxies Performance with
    Greedy-Dual-Size-Frequency Caching Policy", HP Labs HPL-98-69, 1998).

    Priority H = L + F x cost / size, lowest first, ties to the least recently used. F counts the
    entry's accesses since it was loaded (1 at the load, demand or prefetch); L, the inflation,
    is the H of the latest evicted entry, so entries that stop being used age out. A missing
    ``cost`` is the kind's load time from ``policies.cost_aware.DEFAULT_LOAD_COST_S``.
    """

    name: ClassVar[str] = "gdsf"

    def __init__(self, default_load_cost_s: dict[int, float] | None = None) -> None:
        self.default_load_cost_s = {**DEFAULT_LOAD_COST_S, **(default_load_cost_s or {})}
        if any(v < 0 for v in self.default_load_cost_s.values()):
            raise ValueError("default_load_cost_s must be >= 0")

    def new_memory(self, capacity: float) -> GDSFMemory:
        check_capacity(capacity)  # GDSF's order does not depend on the capacity
        return GDSFMemory(self.default_load_cost_s)


class ARCMemory(EvictionMemory):
    """ARC's state: resident lists T1 (seen once recently) and T2 (seen at least twice), ghost
    lists B1 and B2 of keys evicted from them, and the target size p of T1. Every list is an
    OrderedDict key -> size, least recently used first; lengths are sums of sizes.

    The paper's request handling is split across the cache's events: ``on_miss`` adapts p on a
    ghost hit (cases II and III); ``victim_order`` is REPLACE, read-only; ``on_evict`` moves the
    victim to its ghost list; ``on_insert`` puts the key in T2 after a ghost hit, else in T1, and
    only then trims the ghosts (case IV's deletions): the paper deletes the LRU ghost before
    REPLACE, but REPLACE never reads the ghost lists, so deleting it after gives the same state,
    and only on_insert knows the new entry's size.
    """

    def __init__(self, capacity: float) -> None:
        self.c = check_capacity(capacity)
        self.p = 0.0
        self.t1: OrderedDict[Hashable, float] = OrderedDict()
        self.t2: OrderedDict[Hashable, float] = OrderedDict()
        self.b1: OrderedDict[Hashable, float] = OrderedDict()
        self.b2: OrderedDict[Hashable, float] = OrderedDict()
        self.s_t1 = self.s_t2 = self.s_b1 = self.s_b2 = 0.0
        self._eps = 1e-9 * self.c  # float sums of fractional sizes drift; unit sizes are exact
        self._missed: Hashable | None = None  # the key of the pending miss (until its insert)
        self._missed_ghost = False
        self._missed_in_b2 = False  # REPLACE's tie rule: x in B2 and |T1| == p takes T1

    def __contains__(self, key: Hashable) -> bool:
        return key in self.t1 or key in self.t2

    def on_hit(self, key: Hashable, now: float) -> None:
        self._missed = None
        self._missed_in_b2 = False
        if key in self.t2:
            self.t2.move_to_end(key)
        elif key in self.t1:  # case I: a second access moves it to T2's MRU end
            size = self.t1.pop(key)
            self.s_t1 -= size
            self.t2[key] = size
            self.s_t2 += size
        else:
            self.on_insert(key, UNKNOWN_KIND, 1.0, None, now)

    def on_miss(self, key: Hashable, now: float) -> None:
        # Cases II and III; in size units the step is the ghost's size times the paper's ratio.
        if key in self.b1:
            self.p = min(self.p + self.b1[key] * max(1.0, self.s_b2 / self.s_b1), self.c)
        elif key in self.b2:
            self.p = max(self.p - self.b2[key] * max(1.0, self.s_b1 / self.s_b2), 0.0)
        self._missed = key
        self._missed_ghost = key in self.b1 or key in self.b2
        self._missed_in_b2 = key in self.b2

    def on_insert(self, key: Hashable, kind: int, size: float, cost: float | None, now: float,
                  prefetch: bool = False) -> None:
        ghost = key in self.b1 or key in self.b2 or (key == self._missed and self._missed_ghost)
        self._drop(key)
        # a demand load after a ghost hit goes to T2; a new key, or any prefetch, to T1 (and a
        # prefetch never adapts p: only on_miss does)
        if ghost and not prefetch:
            self.t2[key] = size
            self.s_t2 += size
        else:
            self.t1[key] = size
            self.s_t1 += size
        self._missed = None
        self._missed_in_b2 = False
        self._trim()

    def on_evict(self, key: Hashable, now: float) -> None:
        if key in self.t1:
            size = self.t1.pop(key)
            self.s_t1 -= size
            self.b1[key] = size
            self.s_b1 += size
        elif key in self.t2:
            size = self.t2.pop(key)
            self.s_t2 -= size
            self.b2[key] = size
            self.s_b2 += size
        else:
            return
        self._trim()

    def victim_order(self, keys: Sequence[Hashable]) -> list[Hashable]:
        """REPLACE, repeated: take T1's LRU while T1 is non-empty and (|T1| > p, or |T1| == p and
        the missed key is in B2), else T2's LRU. One eviction per miss (unit sizes) is the paper's
        REPLACE exactly; further victims re-apply the rule with T1 shrunk by what was taken, so
        the order is: T1 from its LRU end while it stays above p, then T2, then the rest of T1."""
        wanted = set(keys)
        c1 = [k for k in self.t1 if k in wanted]
        c2 = [k for k in self.t2 if k in wanted]
        t1_len, p, tie = self.s_t1, self.p, self._missed_in_b2
        ranked: list[Hashable] = []
        i = j = 0
        while i < len(c1) or j < len(c2):
            # exact comparisons, as the paper's: p is a float of ratios and a tolerance here
            # would flip REPLACE's choice where |T1| and p differ by rounding
            if i < len(c1) and (j == len(c2) or t1_len > p or (tie and t1_len == p)):
                ranked.append(c1[i])
                t1_len -= self.t1[c1[i]]
                i += 1
            else:
                ranked.append(c2[j])
                j += 1
        return arrange(keys, self, ranked)

    def _drop(self, key: Hashable) -> None:
        """Forget ``key`` from whichever list holds it."""
        for lst, attr in ((self.t1, "s_t1"), (self.t2, "s_t2"), (self.b1, "s_b1"), (self.b2, "s_b2")):
            size = lst.pop(key, None)
            if size is not None:
                setattr(self, attr, getattr(self, attr) - size)

    def _trim(self) -> None:
        """The paper's directory bounds, in size units: |T1| + |B1| <= c (drop B1's LRU ghosts)
        and |T1| + |T2| + |B1| + |B2| <= 2c (drop B2's, then B1's, LRU ghosts)."""
        c, eps = self.c, self._eps
        while self.b1 and self.s_t1 + self.s_b1 > c + eps:
            self.s_b1 -= self.b1.popitem(last=False)[1]
        while (self.b1 or self.b2) and self.s_t1 + self.s_t2 + self.s_b1 + self.s_b2 > 2 * c + eps:
            if self.b2:
                self.s_b2 -= self.b2.popitem(last=False)[1]
            else:
                self.s_b1 -= self.b1.popitem(last=False)[1]
        if not self.b1:
            self.s_b1 = 0.0  # no drift left over once a list empties
        if not self.b2:
            self.s_b2 = 0.0


@EVICTION.register("arc")
class ARC(StatefulEviction):
    """Adaptive Replacement Cache (N. Megiddo and D. S. Modha, "ARC: A Self-Tuning, Low Overhead
    Replacement Cache", USENIX FAST 2003).

    Recency (T1) and frequency (T2) lists whose split p adapts on ghost hits: a hit in B1 grows
    T1's target, a hit in B2 shrinks it. With unit sizes it is the paper's ARC(c); with sizes,
    lengths are sums of sizes, ghosts keep the size they had, the directory is bounded as the
    paper bounds it (|T1|+|B1| <= c, total <= 2c) in size units, and p moves by the ghost's size
    times the paper's ratio. A prefetch enters T1 and adapts nothing.
    """

    name: ClassVar[str] = "arc"

    def new_memory(self, capacity: float) -> ARCMemory:
        return ARCMemory(capacity)
