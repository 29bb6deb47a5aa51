"""Eviction policies: given what a cache holds, rank its entries for eviction.

The interface is one pure, vectorised method. A policy receives a read-only ``CacheView`` of
per-entry statistics, arrays whose last axis is the slots of one cache and whose leading axes
are any number of independent caches, and returns eviction keys of the same shape; the entry
with the lexicographically smallest keys is the victim. The store (live) or the simulator
(``trace_replay.cache_sim``) evicts; the policy keeps no state and mutates nothing.

Why this shape: the live adapter store calls it on one cache of a few entries, and the simulator
calls the very same code on thousands of caches at once (every instance x every capacity in
lock-step), which is what makes a 3.5M-request replay take seconds. Cost-aware and coordinator
policies fit the same mould: ``kind``, ``size_bytes`` and ``load_cost_s`` are in the view, and
a policy that needs cluster-wide state declares ``independent_caches = False`` so the simulator
replays every instance in one global time order instead.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    def priority(self, view: CacheView) -> tuple[np.ndarray, ...]:
        """Eviction keys, each shaped like ``view.key``; lexicographically smallest goes first."""
        ...


EVICTION: Registry[EvictionPolicy] = Registry("eviction", discover="policies")


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
                    pinned: np.ndarray | None = None) -> np.ndarray:
    """Up to ``n`` victim slots of one cache (1-D view), best victim first.

    Only occupied, unpinned slots are proposed; the store decides what to do with them.
    """
    if view.key.ndim != 1:
        raise ValueError("propose_victims takes the view of one cache (1-D arrays)")
    allowed = view.key != EMPTY
    if pinned is not None:
        allowed &= ~pinned
    keys = policy.priority(view)
    out: list[int] = []
    while len(out) < n and allowed.any():
        slot = int(lex_argmin(keys, allowed))
        out.append(slot)
        allowed[slot] = False
    return np.array(out, dtype=np.int64)
