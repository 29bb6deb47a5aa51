"""Eviction policies: given what a cache holds, rank its entries for eviction.

The interface is one pure, vectorised method. A policy receives a read-only ``CacheView`` of
per-entry statistics, arrays whose last axis is the slots of one cache and whose leading axes
are any number of independent caches, and returns eviction keys of the same shape; the entry
with the lexicographically smallest keys is the victim. The store (live) or the simulator
(``trace_replay.cache_sim``) evicts; the policy mutates nothing.

Policies whose order needs history the view cannot hold (ARC's ghosts, SIEVE's hand, GDSF's
inflation) derive from ``StatefulEviction``: the cache keeps one ``EvictionMemory`` per policy
and reports hits, misses, inserts and evictions to it, and the order comes from that memory.

Why this shape: the live adapter store calls it on one cache of a few entries, and the simulator
calls the very same code on thousands of caches at once (every instance x every capacity in
lock-step), which is what makes a 3.5M-request replay take seconds. Cost-aware and coordinator
policies fit the same mould: ``kind``, ``size_bytes`` and ``load_cost_s`` are in the view, and
a policy that needs cluster-wide state declares ``independent_caches = False`` so the simulator
replays every instance in one global time order instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Hashable, Sequence
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from policies.registry import Registry

EMPTY = -1  # key of an empty slot
NEVER = np.iinfo(np.int64).max  # next_seq of an entry that is never used again
_NEVER_BASE = np.iinfo(np.int64).min + 1  # Belady: below every -next_seq, room for last_seq


@dataclass(frozen=True)
class CacheView:
    """Per-slot statistics; shape (..., slots). Empty slots have ``key == EMPTY``.

    ``seq`` is the cache's logical clock: the ordinal of the access being served, strictly
    increasing per cache, so recency is never tied (several adapters of one request share a
    timestamp but not a sequence number). ``now`` is wall-clock seconds for policies that decay.
    """

    key: np.ndarray  # int64 adapter id
    kind: np.ndarray  # int8 component kind (0 ControlNet, 1 LoRA, ...)
    uses: np.ndarray  # int64 accesses since the entry was loaded (0 for an unused prefetch)
    last_seq: np.ndarray  # int64 seq of the latest access (or of the load)
    loaded_seq: np.ndarray  # int64 seq at which the entry was loaded
    last_time: np.ndarray  # float64 seconds of the latest access
    seq: np.ndarray  # int64, shape (...,): the access being served
    now: np.ndarray  # float64, shape (...,): its time in seconds
    next_seq: np.ndarray | None = None  # offline oracle: seq of the next access, NEVER if none
    size_bytes: np.ndarray | None = None
    load_cost_s: np.ndarray | None = None


@runtime_checkable
class EvictionPolicy(Protocol):
    name: ClassVar[str]
    needs_future: ClassVar[bool]  # True: the simulator must fill view.next_seq (offline only)
    independent_caches: ClassVar[bool]  # False: needs one global time order across instances

    # Optional: ``fields: ClassVar[tuple[str, ...]]`` names the CacheView fields the policy reads,
    # so the simulator can skip maintaining the others; absent means all of them.
    # Optional: ``stack_algorithm: ClassVar[bool] = True`` declares the inclusion property (the
    # eviction order never depends on the cache size, and reads neither ``uses`` nor
    # ``loaded_seq``), so the simulator computes every capacity in one pass (Mattson 1970).
    # Optional: ``stateful: ClassVar[bool] = True`` (``StatefulEviction``): the policy needs the
    # cache's ``EvictionMemory`` (``new_memory(capacity)``), passed as ``priority(view, memory)``.

    def priority(self, view: CacheView) -> tuple[np.ndarray, ...]:
        """Eviction keys, each shaped like ``view.key``; lexicographically smallest goes first."""
        ...


EVICTION: Registry[EvictionPolicy] = Registry("eviction", discover="policies")


class EvictionMemory:
    """One cache's memory for a stateful policy: what a ``CacheView`` cannot show, such as ARC's
    ghost lists of evicted keys, SIEVE's hand, S3-FIFO's queues or GDSF's inflation value.

    The cache (live store or simulator) owns one per policy, from ``policy.new_memory(capacity)``,
    and reports every event to it, in this order for a demand access of ``key``:
    a hit: ``on_hit``; a miss: ``on_miss``, then ``on_evict`` for each victim it evicts, then
    ``on_insert``. A prefetch: ``on_evict`` for its victims, then ``on_insert(prefetch=True)``. An
    entry dropped for any other reason (a store clearing a device) also gets ``on_evict``. A
    miss's insert may come later than its evictions, with other keys' events between: the live
    model cache inserts when the load lands, at the measured size (a failed load never inserts),
    so a memory must not assume the next insert is the latest miss's.

    Keys are any hashable (ints in the simulators, model ids live). ``size`` is in the unit the
    cache counts its ``capacity`` in: 1 per entry for a cache of slots, bytes for a byte budget.
    ``cost`` is the entry's load cost in seconds, or None where the cache has none (then a policy
    that prices loads uses its kind defaults). Pure bookkeeping: no clock or randomness of its own.
    """

    def on_hit(self, key: Hashable, now: float) -> None:
        pass

    def on_miss(self, key: Hashable, now: float) -> None:
        pass

    def on_insert(self, key: Hashable, kind: int, size: float, cost: float | None, now: float,
                  prefetch: bool = False) -> None:
        pass

    def on_evict(self, key: Hashable, now: float) -> None:
        pass

    def victim_order(self, keys: Sequence[Hashable]) -> list[Hashable]:
        """``keys`` (resident entries the cache may evict), best victim first. Reads, never writes:
        the cache may ask and then evict something else (a pinned entry was skipped)."""
        raise NotImplementedError


class StatefulEviction:
    """Base of eviction policies that remember (``stateful = True``): the victim order comes from
    the cache's ``EvictionMemory``, not from the view's statistics alone.

    ``priority(view, memory)`` ranks a one-cache (1-D) view by ``memory.victim_order`` so every
    caller that takes keys works unchanged; callers that hold non-integer keys (the live store)
    call ``victim_order`` directly. The lock-step and stack simulators cannot replay a policy
    with memory (they never report events), so ``t2i trace cache`` runs these sequentially.
    """

    name: ClassVar[str] = ""
    needs_future: ClassVar[bool] = False
    independent_caches: ClassVar[bool] = True
    stateful: ClassVar[bool] = True
    fields: ClassVar[tuple[str, ...]] = ("last_seq",)

    def new_memory(self, capacity: float) -> EvictionMemory:
        raise NotImplementedError

    def priority(self, view: CacheView, memory: EvictionMemory | None = None) -> tuple[np.ndarray, ...]:
        if memory is None:
            raise ValueError(f"{self.name!r} remembers: pass the cache's memory (policy.new_memory(capacity))")
        key = np.asarray(view.key)
        if key.ndim != 1:
            raise ValueError(f"{self.name!r} ranks one cache at a time (a 1-D view)")
        occupied = np.flatnonzero(key != EMPTY)
        rank = np.full(key.shape, key.size, dtype=np.int64)  # empty slots last
        order = memory.victim_order(key[occupied].tolist())
        slot_of = {int(key[s]): int(s) for s in occupied}
        rank[[slot_of[k] for k in order]] = np.arange(len(order), dtype=np.int64)
        return (rank,)


def check_capacity(capacity: float) -> float:
    """A memory's capacity as a float; a clear error for anything not > 0."""
    if not capacity > 0:
        raise ValueError(f"capacity must be > 0, got {capacity}")
    return float(capacity)


def is_stateful(policy: object) -> bool:
    return bool(getattr(policy, "stateful", False))


def eviction_keys(policy: EvictionPolicy, view: CacheView,
                  memory: EvictionMemory | None = None) -> tuple[np.ndarray, ...]:
    """``policy.priority(view)``, with the cache's memory for a policy that remembers."""
    return policy.priority(view, memory) if is_stateful(policy) else policy.priority(view)


@EVICTION.register("lru")
class LRU:
    """Least recently used first."""

    name: ClassVar[str] = "lru"
    needs_future: ClassVar[bool] = False
    independent_caches: ClassVar[bool] = True
    fields: ClassVar[tuple[str, ...]] = ("last_seq",)
    stack_algorithm: ClassVar[bool] = True

    def priority(self, view: CacheView) -> tuple[np.ndarray, ...]:
        return (view.last_seq,)


@EVICTION.register("lfu")
class LFU:
    """Fewest uses since the entry was loaded first; ties to the least recently used."""

    name: ClassVar[str] = "lfu"
    needs_future: ClassVar[bool] = False
    independent_caches: ClassVar[bool] = True
    fields: ClassVar[tuple[str, ...]] = ("uses", "last_seq")

    def priority(self, view: CacheView) -> tuple[np.ndarray, ...]:
        # one key, uses in the high bits and recency in the low 32, instead of a two-key tuple:
        # same order while seq < 2**32, and half the work in a simulation that calls this a lot
        if view.last_seq.size and int(view.last_seq.max()) >= 1 << 32:
            return (view.uses, view.last_seq)
        return ((view.uses.astype(np.int64) << 32) | view.last_seq.astype(np.int64),)


@EVICTION.register("belady")
class Belady:
    """Belady's MIN: the entry whose next use lies farthest ahead goes first. The offline optimum
    for one cache of equal-size slots (`t2i trace cache`); with byte sizes, or behind a cluster
    router, a heuristic reference rather than a bound.

    Entries never used again all tie at NEVER; the tie goes to the least recently used so the
    choice is deterministic (any tie-break gives the same, optimal, miss count).
    """

    name: ClassVar[str] = "belady"
    needs_future: ClassVar[bool] = True
    independent_caches: ClassVar[bool] = True
    fields: ClassVar[tuple[str, ...]] = ("next_seq", "last_seq")
    stack_algorithm: ClassVar[bool] = True

    def priority(self, view: CacheView) -> tuple[np.ndarray, ...]:
        if view.next_seq is None:
            raise ValueError("belady needs the offline next-use oracle (view.next_seq); it cannot run online")
        # one key instead of two (the simulator calls this every round): finite next uses rank
        # by -next_seq, never-again entries sit below all of them, ordered by recency
        never = view.next_seq == NEVER
        return (np.where(never, _NEVER_BASE + view.last_seq, -view.next_seq),)


def lex_argmin(keys: tuple[np.ndarray, ...], allowed: np.ndarray) -> np.ndarray:
    """Index along the last axis of the lexicographically smallest allowed entry.

    Rows with nothing allowed return 0; callers only ask where something is evictable. Keys
    must stay below their dtype's maximum (finite for floats): that value marks "not allowed".
    """
    cand = allowed
    for i, k in enumerate(keys):
        k = np.asarray(k)
        masked = np.where(cand, k, np.inf if k.dtype.kind == "f" else _max_of(k.dtype))
        if i == len(keys) - 1:
            return np.argmin(masked, axis=-1)
        cand = cand & (masked == masked.min(axis=-1, keepdims=True))
    return np.argmax(cand, axis=-1)


_MAX: dict[np.dtype, int] = {}


def _max_of(dtype: np.dtype) -> int:
    if dtype not in _MAX:  # np.iinfo is slow enough to show up in a 50k-round simulation
        _MAX[dtype] = int(np.iinfo(dtype).max)
    return _MAX[dtype]


def propose_victims(policy: EvictionPolicy, view: CacheView, n: int = 1,
                    pinned: np.ndarray | None = None, memory: EvictionMemory | None = None) -> np.ndarray:
    """Up to ``n`` victim slots of one cache (1-D view), best victim first.

    Only occupied, unpinned slots are proposed; the store decides what to do with them.
    """
    if view.key.ndim != 1:
        raise ValueError("propose_victims takes the view of one cache (1-D arrays)")
    allowed = view.key != EMPTY
    if pinned is not None:
        allowed &= ~pinned
    keys = eviction_keys(policy, view, memory)
    out: list[int] = []
    while len(out) < n and allowed.any():
        slot = int(lex_argmin(keys, allowed))
        out.append(slot)
        allowed[slot] = False
    return np.array(out, dtype=np.int64)
