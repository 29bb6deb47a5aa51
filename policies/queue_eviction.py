"""Classic stateful eviction baselines, part two: the FIFO-queue designs S3-FIFO and SIEVE (GDSF
and ARC are in ``policies.classic_eviction``, with the conventions both files share).

Both evict by running a procedure that also moves other entries (S3-FIFO promotes and
reinserts, SIEVE's hand clears visited bits). ``victim_order`` must not write, so it runs the
procedure on a copy until every resident entry has come out and reports that order;
``on_evict(key)`` then runs the procedure on the real state up to and including ``key``.

Out of order: when the cache evicts ``key`` while the procedure would first take other entries
(they are pinned, or the store dropped ``key`` for its own reasons), those entries are treated as
pinned: they stay resident, in the place the procedure left them (S3-FIFO: back at the tail of
their queue; SIEVE: where they are, visited bit clear), and are proposed first again next time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import ClassVar

from policies.classic_eviction import UNKNOWN_KIND, arrange
from policies.eviction import EVICTION, EvictionMemory, StatefulEviction, check_capacity

MAX_FREQ = 3  # S3-FIFO's two-bit frequency counter


class _Queues:
    """S3-FIFO's resident state: small queue S and main queue M (OrderedDict key -> size, tail
    (oldest) first) and each entry's frequency. ``pop_victim`` is the eviction procedure."""

    __slots__ = ("small", "main", "freq", "s_used", "m_used", "s_cap", "m_cap")

    def __init__(self, s_cap: float, m_cap: float) -> None:
        self.small: OrderedDict[Hashable, float] = OrderedDict()
        self.main: OrderedDict[Hashable, float] = OrderedDict()
        self.freq: dict[Hashable, int] = {}
        self.s_used = self.m_used = 0.0
        self.s_cap, self.m_cap = s_cap, m_cap  # tolerances already applied

    def copy(self) -> _Queues:
        q = _Queues(self.s_cap, self.m_cap)
        q.small, q.main, q.freq = self.small.copy(), self.main.copy(), dict(self.freq)
        q.s_used, q.m_used = self.s_used, self.m_used
        return q

    def pop_victim(self) -> tuple[Hashable, float, bool] | None:
        """Evict one entry: (key, size, came from S), or None when both queues are empty.

        The paper's evict(): from S while S holds at least its share (or M is empty), else from M.
        From S, the tail moves to M's head if its frequency is above 1 (the paper's Algorithm 1,
        ``t.freq > 1``: accessed at least twice while in S), and if that makes M exceed its share
        M evicts; otherwise the tail leaves (to the ghost queue, which the caller keeps). One
        victim per call: the cache, not the procedure, decides how many it needs.
        """
        small, main, freq = self.small, self.main, self.freq
        while small or main:
            if small and (self.s_used >= self.s_cap or not main):
                key, size = small.popitem(last=False)
                self.s_used -= size
                if freq[key] > 1:
                    main[key] = size
                    self.m_used += size
                    if self.m_used > self.m_cap:
                        return self._pop_main()
                    continue
                return key, size, True
            return self._pop_main()
        return None

    def _pop_main(self) -> tuple[Hashable, float, bool]:
        """From M: a tail with frequency > 0 is reinserted at the head with frequency - 1, the
        first with frequency 0 is evicted (at most MAX_FREQ + 1 laps)."""
        main, freq = self.main, self.freq
        while True:
            key = next(iter(main))
            if freq[key] > 0:
                freq[key] -= 1
                main.move_to_end(key)
            else:
                size = main.pop(key)
                self.m_used -= size
                return key, size, False


class S3FIFOMemory(EvictionMemory):
    """S3-FIFO's state: queues S and M, each entry's frequency (capped at 3), and the ghost queue
    G of keys evicted from S, bounded to M's share of the capacity in size units (as many keys as
    M holds, for unit sizes)."""

    def __init__(self, capacity: float, small_share: float = 0.1) -> None:
        capacity = check_capacity(capacity)
        eps = 1e-9 * capacity  # float shares (0.1 x 30 is not 3.0) and drifting sums of sizes
        # S's share is 10%; below one entry (fewer than 10 slots) S still holds the newest entry,
        # since the cache evicts before it inserts into S
        s_cap = small_share * capacity
        self.g_cap = capacity - s_cap + eps
        self._q = _Queues(s_cap - eps, capacity - s_cap + eps)
        self.ghost: OrderedDict[Hashable, float] = OrderedDict()  # oldest first
        self.g_used = 0.0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._q.freq

    def queue_of(self, key: Hashable) -> str | None:
        """'S', 'M', 'G' (a ghost) or None: where ``key`` is (for tests and debugging)."""
        q = self._q
        return "S" if key in q.small else "M" if key in q.main else "G" if key in self.ghost else None

    def on_hit(self, key: Hashable, now: float) -> None:
        freq = self._q.freq
        f = freq.get(key)
        if f is None:
            self.on_insert(key, UNKNOWN_KIND, 1.0, None, now)
        elif f < MAX_FREQ:
            freq[key] = f + 1

    def on_insert(self, key: Hashable, kind: int, size: float, cost: float | None, now: float,
                  prefetch: bool = False) -> None:
        q = self._q
        if key in q.freq:  # reported loaded twice: start over as a new entry
            self._forget(key)
        g = self.ghost.pop(key, None)
        if g is not None:
            self.g_used -= g
        # a ghost hit enters M (the paper); a prefetch is speculative and always starts in S
        if g is not None and not prefetch:
            q.main[key] = size
            q.m_used += size
        else:
            q.small[key] = size
            q.s_used += size
        q.freq[key] = 0

    def on_evict(self, key: Hashable, now: float) -> None:
        q = self._q
        if key not in q.freq:
            return
        skipped = []
        while True:
            victim, size, from_small = q.pop_victim()
            if victim == key:
                break
            skipped.append((victim, size, from_small))
        for victim, size, from_small in reversed(skipped):  # pinned: back to the tail, in order
            if from_small:
                q.small[victim] = size
                q.small.move_to_end(victim, last=False)
                q.s_used += size
            else:
                q.main[victim] = size
                q.main.move_to_end(victim, last=False)
                q.m_used += size
        del q.freq[key]
        if from_small:  # only what leaves S is remembered; M's victims were given their chance
            self.ghost[key] = size
            self.g_used += size
            while self.ghost and self.g_used > self.g_cap:
                self.g_used -= self.ghost.popitem(last=False)[1]
        if not q.small:
            q.s_used = 0.0
        if not q.main:
            q.m_used = 0.0

    def victim_order(self, keys: Sequence[Hashable]) -> list[Hashable]:
        wanted = {k for k in keys if k in self._q.freq}
        q = self._q.copy()
        ranked: list[Hashable] = []
        while len(ranked) < len(wanted):  # stop once every asked-for key has come out
            victim = q.pop_victim()[0]
            if victim in wanted:
                ranked.append(victim)
        return arrange(keys, self._q.freq, ranked)

    def _forget(self, key: Hashable) -> None:
        q = self._q
        del q.freq[key]
        if key in q.small:
            q.s_used -= q.small.pop(key)
        else:
            q.m_used -= q.main.pop(key)


@EVICTION.register("s3-fifo")
class S3FIFO(StatefulEviction):
    """S3-FIFO (J. Yang, Y. Zhang, Z. Qiu, Y. Yue and R. Vinayak, "FIFO queues are all you need
    for cache eviction", ACM SOSP 2023).

    A small FIFO S (10% of the capacity) filters one-hit wonders: a new key enters S and leaves
    to the ghost queue G unless accessed at least twice there (frequency > 1, the paper's
    Algorithm 1), in which case it moves to the main FIFO M. M reinserts an entry whose
    frequency (capped at 3) is above 0, decrementing it, and evicts one at 0. A key found in G
    enters M directly. A prefetch enters S.
    """

    name: ClassVar[str] = "s3-fifo"

    def new_memory(self, capacity: float) -> S3FIFOMemory:
        return S3FIFOMemory(capacity)


class SieveMemory(EvictionMemory):
    """SIEVE's state: one FIFO queue as a doubly linked list (dicts ``_newer`` and ``_older``),
    a visited bit per entry, and the hand (None: start at the tail). Sizes play no part."""

    def __init__(self, capacity: float) -> None:
        check_capacity(capacity)  # SIEVE's order does not depend on the capacity
        self.visited: dict[Hashable, bool] = {}
        self._newer: dict[Hashable, Hashable | None] = {}
        self._older: dict[Hashable, Hashable | None] = {}
        self._head: Hashable | None = None  # newest
        self._tail: Hashable | None = None  # oldest
        self.hand: Hashable | None = None

    def __contains__(self, key: Hashable) -> bool:
        return key in self.visited

    def queue(self) -> list[Hashable]:
        """Resident keys from the tail (oldest) to the head (newest)."""
        out, k = [], self._tail
        while k is not None:
            out.append(k)
            k = self._newer[k]
        return out

    def on_hit(self, key: Hashable, now: float) -> None:
        if key in self.visited:
            self.visited[key] = True
        else:
            self.on_insert(key, UNKNOWN_KIND, 1.0, None, now)

    def on_insert(self, key: Hashable, kind: int, size: float, cost: float | None, now: float,
                  prefetch: bool = False) -> None:
        if key in self.visited:  # reported loaded twice: start over as a new entry
            self._unlink(key)
        self.visited[key] = False
        self._older[key], self._newer[key] = self._head, None
        if self._head is not None:
            self._newer[self._head] = key
        self._head = key
        if self._tail is None:
            self._tail = key

    def on_evict(self, key: Hashable, now: float) -> None:
        if key not in self.visited:
            return
        visited, newer = self.visited, self._newer
        k = self.hand if self.hand is not None else self._tail
        # The hand's walk: clear visited bits until it reaches ``key`` unvisited (a visited
        # ``key`` is cleared and taken on the next lap, as the paper's hand would). An unvisited
        # entry before it was the hand's choice that the cache kept (pinned): pass over it.
        while k != key or visited[k]:
            visited[k] = False
            nxt = newer[k]
            k = nxt if nxt is not None else self._tail
        self.hand = newer[key]  # toward the head; None wraps to the tail
        self._unlink(key)

    def victim_order(self, keys: Sequence[Hashable]) -> list[Hashable]:
        order = self.queue()
        n = len(order)
        bits = [self.visited[k] for k in order]
        gone = [False] * n
        i = order.index(self.hand) if self.hand is not None else 0
        ranked: list[Hashable] = []
        while len(ranked) < n:  # at most three laps: one clears every bit, the next takes all
            if not gone[i]:
                if bits[i]:
                    bits[i] = False
                else:
                    ranked.append(order[i])
                    gone[i] = True
            i = i + 1 if i + 1 < n else 0
        return arrange(keys, self.visited, ranked)

    def _unlink(self, key: Hashable) -> None:
        older, newer = self._older.pop(key), self._newer.pop(key)
        del self.visited[key]
        if older is not None:
            self._newer[older] = newer
        else:
            self._tail = newer
        if newer is not None:
            self._older[newer] = older
        else:
            self._head = older
        if self.hand == key:  # evicted by other means: the hand moves on toward the head
            self.hand = newer


@EVICTION.register("sieve")
class Sieve(StatefulEviction):
    """SIEVE (Y. Zhang, J. Yang, Y. Yue, Y. Vigfusson and K. V. Rashmi, "SIEVE is Simpler than
    LRU: an Efficient Turn-Key Eviction Algorithm for Web Caches", USENIX NSDI 2024).

    One FIFO queue, new entries at the head, a visited bit set by each hit. The hand moves from
    the tail toward the head, clearing visited bits, and evicts the first unvisited entry; it
    stays there for the next eviction and wraps from the head back to the tail.
    """

    name: ClassVar[str] = "sieve"

    def new_memory(self, capacity: float) -> SieveMemory:
        return SieveMemory(capacity)
