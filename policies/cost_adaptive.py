"""The project's default eviction, ``cost-aware``: a priced reuse rate at several time scales,
and the scale that has lately cost the fewest load-seconds decides.

Why: the production sources say eviction must weigh load cost, reuse probability and size, and
the earlier frequency-weighted form (``cost-lrfu``) lost to plain LRU on the GenTD26 trace, where
popularity moves: one fixed balance of recency against frequency is right for one trace and
wrong for another. So the policy keeps, for every key it has seen (resident or not, up to
``history`` keys), a decayed access count at each of several half-lives, from a fraction of a
cache turnover (which behaves like LRU) to many turnovers (a long-run frequency, as perfect LFU
keeps under a stable Zipf popularity). An entry's value at scale e is

    decayed count_e x load cost x kind weight / size

(GDSF's cost-per-byte pricing with the count replaced by a decayed one). Each scale also runs
as a shadow cache of the same capacity on the same demand accesses, and its missed load-seconds
are summed with a decay; the scale with the fewest recent missed load-seconds is the leader, and
the real cache evicts the entry the leader values least (ties to the least recently used). This
is learning from each candidate's own regret, in the spirit of LeCaR (Vietri et al., HotStorage
2018) and ACME (Ari et al., 2002), with decayed-frequency experts instead of LRU/LFU.

Clock: time counts demand accesses divided by the entries resident, so a half-life of 1 is about
one turnover of the cache whether it holds 4 LoRA slots or 30 models in a byte budget. Half-lives
and the leader's memory are defaults chosen once for every trace and cache size (never per trace).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import ClassVar

from policies.cost_aware import DEFAULT_KIND_WEIGHT, DEFAULT_LOAD_COST_S
from policies.eviction import EVICTION, EvictionMemory, StatefulEviction, check_capacity

NEG = -math.inf


class _Shadow:
    """One scale's own cache of the same capacity: what it would hold, for its regret.

    Each held key's eviction key, (value at this scale, last access), is kept current (it changes
    only when the key is accessed or re-priced), so a shadow's eviction is one ``min`` over a
    dict instead of recomputing every value: this runs on every miss of every scale.
    """

    __slots__ = ("order", "size", "used")

    def __init__(self) -> None:
        self.order: dict[Hashable, tuple[float, float]] = {}
        self.size: dict[Hashable, float] = {}
        self.used = 0.0


class AdaptiveCostMemory(EvictionMemory):
    def __init__(self, policy: CostAware, capacity: float) -> None:
        self.p = policy
        self.capacity = capacity
        n = len(policy.half_lives)
        self.t = 0.0  # the scaled clock
        self.score: dict[Hashable, list[float]] = {}  # log2 decayed count referenced to t = 0, per scale
        self.last: dict[Hashable, float] = {}
        self.price: dict[Hashable, float] = {}  # log2(cost x weight / size)
        self.size: dict[Hashable, float] = {}
        self.cost: dict[Hashable, float] = {}
        self.resident: set[Hashable] = set()
        self.shadows = [_Shadow() for _ in range(n)]
        self.regret = [0.0] * n  # decayed missed load-seconds per scale
        self._regret_t = 0.0
        # demand misses waiting for their insert (a live cache inserts when the load lands, so
        # other keys' events may come between)
        self.pending: set[Hashable] = set()

    # --- events -----------------------------------------------------------------------------
    def on_hit(self, key: Hashable, now: float) -> None:
        self._access(key)

    def on_miss(self, key: Hashable, now: float) -> None:
        self.pending.add(key)  # counted at on_insert, when its size and cost are known

    def on_insert(self, key: Hashable, kind: int, size: float, cost: float | None, now: float,
                  prefetch: bool = False) -> None:
        p = self.p
        k = min(max(int(kind), 0), len(p.kind_weight) - 1)
        c = float(cost) if cost is not None and cost > 0 else p.default_cost[k]
        s = max(float(size), 1e-12)
        self.size[key], self.cost[key] = s, c
        price = math.log2(max(c * p.kind_weight[k], 1e-300) / s)
        if self.price.get(key) != price:
            self.price[key] = price
            for e, sh in enumerate(self.shadows):  # re-priced: the shadows holding it re-rank it
                if key in sh.order:
                    sh.order[key] = (self.score[key][e] + price, self.last[key])
        self.resident.add(key)
        if key in self.pending:
            self.pending.discard(key)
            if not prefetch:  # a prefetch is not demand: no count, no regret
                self._access(key)
        self._prune()

    def on_evict(self, key: Hashable, now: float) -> None:
        self.resident.discard(key)

    # --- the decision -------------------------------------------------------------------------
    def leader(self) -> int:
        return min(range(len(self.regret)), key=lambda e: (self.regret[e], e))

    def victim_order(self, keys: Sequence[Hashable]) -> list[Hashable]:
        e = self.leader()
        return sorted(keys, key=lambda k: (self._value(e, k), self.last.get(k, NEG)))

    def _value(self, e: int, k: Hashable) -> float:
        s = self.score.get(k)
        return NEG if s is None else s[e] + self.price.get(k, 0.0)

    # --- bookkeeping ---------------------------------------------------------------------------
    def _access(self, key: Hashable) -> None:
        p = self.p
        self.t += 1.0 / max(len(self.resident), 1)
        t = self.t
        s = self.score.get(key)
        if s is None:
            s = self.score[key] = [NEG] * len(p.half_lives)
        for e, rate in enumerate(p.rates):  # s[e] = log2(2**s[e] + 2**(t / half-life)), inlined
            a, b = s[e], t * rate
            if a == NEG:
                s[e] = b
            elif a >= b:
                s[e] = a + math.log2(1.0 + 2.0 ** (b - a))
            else:
                s[e] = b + math.log2(1.0 + 2.0 ** (a - b))
        self.last[key] = t
        decay = 2.0 ** (-(t - self._regret_t) / p.leader_half_life)
        self._regret_t = t
        cost, size, price = self.cost.get(key, 1.0), self.size.get(key, 1.0), self.price.get(key, 0.0)
        regret = self.regret
        for e, sh in enumerate(self.shadows):
            regret[e] *= decay
            rank = (s[e] + price, t)
            if key in sh.order:
                sh.order[key] = rank
                continue
            regret[e] += cost
            self._shadow_admit(sh, key, size, rank)

    def _shadow_admit(self, sh: _Shadow, key: Hashable, size: float, rank: tuple[float, float]) -> None:
        if size > self.capacity:
            return
        order = sh.order
        while sh.used + size > self.capacity and order:
            victim = min(order, key=order.__getitem__)
            del order[victim]
            sh.used -= sh.size.pop(victim)
        order[key] = rank
        sh.size[key] = size
        sh.used += size

    def _prune(self) -> None:
        """Forget the longest-unused keys no cache (real or shadow) holds, past ``history``."""
        if len(self.pending) > self.p.history:  # misses whose loads failed never insert
            self.pending.clear()
        if len(self.score) <= 2 * self.p.history:
            return
        held = set(self.resident).union(self.pending, *(sh.order for sh in self.shadows))
        old = sorted((k for k in self.score if k not in held), key=lambda k: self.last.get(k, NEG))
        for k in old[: len(self.score) - self.p.history]:
            for d in (self.score, self.last, self.price, self.size, self.cost):
                d.pop(k, None)


@EVICTION.register("cost-aware")
class CostAware(StatefulEviction):
    """Lowest decayed-count x load cost x kind weight / size first, at the time scale that has
    lately missed the fewest load-seconds (see the module docstring)."""

    name: ClassVar[str] = "cost-aware"

    def __init__(self, half_lives: Sequence[float] = (0.25, 1.0, 4.0, 16.0, 64.0), leader_half_life: float = 32.0,
                 kind_weight: dict[int, float] | None = None, default_load_cost_s: dict[int, float] | None = None,
                 history: int = 4096) -> None:
        if not half_lives or any(not h > 0 for h in half_lives):
            raise ValueError(f"half_lives must be a non-empty list of numbers > 0, got {list(half_lives)}")
        if not leader_half_life > 0:
            raise ValueError(f"leader_half_life must be > 0, got {leader_half_life}")
        if history < 1:
            raise ValueError(f"history must be >= 1 key, got {history}")
        self.half_lives = tuple(float(h) for h in half_lives)
        self.rates = tuple(1.0 / h for h in self.half_lives)
        self.leader_half_life = float(leader_half_life)
        self.history = int(history)
        weight = {**DEFAULT_KIND_WEIGHT, **(kind_weight or {})}
        cost = {**DEFAULT_LOAD_COST_S, **(default_load_cost_s or {})}
        if any(v < 0 for v in weight.values()) or any(v < 0 for v in cost.values()):
            raise ValueError("kind_weight and default_load_cost_s must be >= 0")
        n = max(max(weight), max(cost)) + 1
        self.kind_weight = [float(weight.get(k, 1.0)) for k in range(n)]
        self.default_cost = [float(cost.get(k, 1.0)) for k in range(n)]

    def new_memory(self, capacity: float) -> AdaptiveCostMemory:
        return AdaptiveCostMemory(self, check_capacity(capacity))
