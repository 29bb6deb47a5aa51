"""Prefetch policies: after a request is served, which adapters should be loaded ahead of demand.

A prefetch policy proposes keys; the cache loads them (evicting through its eviction policy when
full) and counts every such load, so ``loads = misses + prefetch loads`` is comparable across
policies. Pure: the context is a snapshot, randomness comes in as a Generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from policies.eviction import EMPTY, CacheView
from policies.registry import Registry


@dataclass(frozen=True)
class PrefetchContext:
    """What one cache knows after serving a request."""

    view: CacheView  # 1-D: the cache's slots
    key_uses: np.ndarray  # int64, cluster-wide uses of every adapter key so far (index = key)
    key_last_time: np.ndarray  # float64, time of each key's latest access anywhere, -inf if never
    seq: int
    now: float


@runtime_checkable
class PrefetchPolicy(Protocol):
    name: ClassVar[str]

    def propose(self, ctx: PrefetchContext, rng: np.random.Generator) -> np.ndarray:
        """Adapter keys to load now, most wanted first (already cached keys are ignored)."""
        ...


PREFETCH: Registry[PrefetchPolicy] = Registry("prefetch", discover="policies")


@PREFETCH.register("none")
class NoPrefetch:
    name: ClassVar[str] = "none"

    def propose(self, ctx: PrefetchContext, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)


@PREFETCH.register("fill-popular")
class FillPopular:
    """Fill free slots with the adapters most used cluster-wide that this cache lacks.

    Never evicts to prefetch.

    A simple frequency baseline that the bandit prefetcher of a later issue has to beat.
    """

    name: ClassVar[str] = "fill-popular"

    def propose(self, ctx: PrefetchContext, rng: np.random.Generator) -> np.ndarray:
        free = int(np.count_nonzero(ctx.view.key == EMPTY))
        if free == 0:
            return np.zeros(0, dtype=np.int64)
        uses = ctx.key_uses.astype(np.float64)
        cached = ctx.view.key[ctx.view.key != EMPTY]
        uses[cached] = 0.0
        order = np.lexsort((-ctx.key_last_time, -uses))  # most used, then most recent
        return order[uses[order] > 0][:free].astype(np.int64)
