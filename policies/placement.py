"""Placement: which replicas keep which hot pipelines resident, and which pairs to pre-fuse.

The talk: the top 5% of pipelines take 78% of requests, yet hot models ran *slower* (29 s vs
25.8 s) because one warm copy became a queue. So a hot pipeline persists on k replicas with k
from its demand share (a pipeline with 20% of demand gets ~20% of the replicas, or of those the
demand keeps busy when the caller says how many: ``PlacementContext.demand_replicas``), at least
``min_replicas`` for failover, at most all of them. Warm pipelines are the bandit prefetcher's;
cold ones are cached opportunistically and evicted first, so placement leaves them alone.

Replicas for a pipeline are chosen greedily, hottest pipeline first, preferring replicas that
already hold its components (no load) or have pinned its base for another hot pipeline (bytes
shared), within a pin budget of ``pin_fraction`` of each replica's GPU memory so opportunistic
caching always keeps room. Optionally the top base+LoRA pairs are flagged for pre-fused weights
(the talk: top 50 pairs, 73% of requests, 92% less patch overhead).

With band pools (the default) the hot pipelines are pinned inside a hot pool sized by the hot
band's share of demand, and the plan marks those replicas HOT; routing then keeps warm and cold
requests on the other replicas, so their loads never queue behind hot traffic.

With ``spill`` a hot pipeline that fits on no replica of the hot pool (its pin budget is taken by
hotter pipelines) is pinned outside the pool instead, on the replicas with the least pinned
already. Without it such a pipeline is pinned nowhere, and, being hot, it is not the bandit's to
prefetch either: live (`results/live_coordinator_500x2_seed2_u06_head.json`) the heavy demo model,
hot but too large to sit beside the light one in the two-replica hot pool, lived only in host
tiers and moved between three replicas while the fourth held nothing, had nothing pinned or
prefetched, and was never routed a request (the others always had a cheaper host copy). Off by
default: in the 100-GPU simulation it cut katz-synth's violations from 0.29% to 0.24% for 1.58x
the load-seconds, and changed nothing on GenTD26 (`results/simulator_policies_spill.json`).

The plan is a proposal; the coordinator (live) or simulator loads, pins and unpins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from policies.registry import Registry
from policies.snapshot import BASE, GPU, HOT, LORA, SHARED, ClusterSnapshot


@dataclass(frozen=True)
class PlacementContext:
    snapshot: ClusterSnapshot
    demand: np.ndarray  # float64 (P,): decayed demand per pipeline id
    bands: np.ndarray  # int8 (P,): HOT/WARM/COLD per pipeline id
    pipeline_components: Sequence[np.ndarray]  # component ids per pipeline id, base first
    gpu_bytes: np.ndarray  # int64 (R,): each replica's GPU memory for model weights
    # Replicas the current demand keeps busy (offered load / target utilisation), when the caller
    # knows it. Shares of demand are then shares of these, not of every replica: on a cluster
    # that is 10% busy a pipeline with 20% of requests needs 20% of the busy replicas, and a copy
    # on each of 20% of all replicas is loads that buy no queueing relief. None: all replicas.
    demand_replicas: float | None = None


@dataclass(frozen=True)
class PlacementPlan:
    """Pins as parallel arrays (pipeline ``pin_pipeline[i]`` stays on replica ``pin_replica[i]``)."""

    pipelines: np.ndarray  # int64 (H,): hot pipelines considered, hottest first
    k: np.ndarray  # int64 (H,): replicas each was given (may be < wanted when memory ran out)
    pin_pipeline: np.ndarray  # int64 (M,)
    pin_replica: np.ndarray  # int64 (M,)
    fused_base: np.ndarray  # int64 (F,): base of each pair to pre-fuse
    fused_lora: np.ndarray  # int64 (F,)
    pool: np.ndarray  # int8 (R,): HOT for replicas holding pins (when band pools are on), else SHARED
    wanted_k: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 (H,)


@runtime_checkable
class PlacementPolicy(Protocol):
    name: ClassVar[str]

    def plan(self, ctx: PlacementContext) -> PlacementPlan: ...


PLACEMENT: Registry[PlacementPolicy] = Registry("placement", discover="policies")
_I = np.int64


def _scale(n_replicas: int, demand_replicas: float | None) -> float:
    """How many replicas demand shares are shares of."""
    if demand_replicas is None:
        return float(n_replicas)
    if not demand_replicas >= 0:
        raise ValueError(f"demand_replicas must be >= 0 or None, got {demand_replicas}")
    return min(float(n_replicas), float(demand_replicas))


def _empty_plan(n_replicas: int) -> PlacementPlan:
    z = np.zeros(0, _I)
    return PlacementPlan(z, z, z, z, z, z, np.full(n_replicas, SHARED, np.int8), z)


@PLACEMENT.register("none")
class NoPlacement:
    """Nothing pinned, one shared pool: every pipeline is cached opportunistically (Ray's default)."""

    name: ClassVar[str] = "none"

    def plan(self, ctx: PlacementContext) -> PlacementPlan:
        return _empty_plan(ctx.snapshot.replicas.n)


@PLACEMENT.register("popularity-bands")
class PopularityBands:
    """Hot pipelines on k replicas, k = clip(ceil(share x R x overprovision), min_replicas, R)."""

    name: ClassVar[str] = "popularity-bands"

    def __init__(self, min_replicas: int = 2, overprovision: float = 1.0, pin_fraction: float = 0.6,
                 fuse_top: int = 50, band_pools: bool = True, spill: bool = False) -> None:
        if min_replicas < 1 or overprovision <= 0 or not 0 < pin_fraction <= 1 or fuse_top < 0:
            raise ValueError(f"need min_replicas >= 1 (got {min_replicas}), overprovision > 0 (got {overprovision}), "
                             f"0 < pin_fraction <= 1 (got {pin_fraction}), fuse_top >= 0 (got {fuse_top})")
        self.min_replicas, self.overprovision = int(min_replicas), float(overprovision)
        self.pin_fraction, self.fuse_top, self.band_pools = float(pin_fraction), int(fuse_top), bool(band_pools)
        self.spill = bool(spill)

    def wanted_replicas(self, demand: np.ndarray, hot: np.ndarray, n_replicas: int,
                        demand_replicas: float | None = None) -> np.ndarray:
        """k per hot pipeline from its share of all demand, of R replicas (or of the
        ``demand_replicas`` the demand keeps busy, if fewer), within [min_replicas, R]."""
        total = float(demand.sum())
        share = demand[hot] / total if total > 0 else np.zeros(hot.size)
        k = np.ceil(share * _scale(n_replicas, demand_replicas) * self.overprovision - 1e-9).astype(_I)
        return np.clip(k, min(self.min_replicas, n_replicas), n_replicas)

    def plan(self, ctx: PlacementContext) -> PlacementPlan:
        snap = ctx.snapshot
        R = snap.replicas.n
        if R == 0:
            return _empty_plan(0)
        hot = np.flatnonzero(ctx.bands == HOT)
        hot = hot[np.lexsort((hot, -ctx.demand[hot]))]  # hottest first, ties to the lower id
        wanted = self.wanted_replicas(ctx.demand, hot, R, ctx.demand_replicas)
        # local component space: only components of hot pipelines matter here
        comps = [np.asarray(ctx.pipeline_components[p], _I) for p in hot]
        uniq = np.unique(np.concatenate(comps)) if comps else np.zeros(0, _I)
        size = snap.components.size_bytes[uniq].astype(np.float64)
        resident = snap.replicas.tier[:, uniq] == GPU  # (R, U)
        pinned = np.zeros((R, uniq.size), dtype=bool)
        pin_budget = ctx.gpu_bytes.astype(np.float64) * self.pin_fraction
        in_pool = self._hot_pool(ctx, hot, wanted, uniq, comps, resident)
        budget = np.where(in_pool, pin_budget, -1.0)  # nothing fits outside the hot pool (but a spill)
        used = np.zeros(R)
        k_got = np.zeros(hot.size, _I)
        pin_p: list[np.ndarray] = []
        pin_r: list[np.ndarray] = []
        for h, p in enumerate(hot.tolist()):
            local = np.searchsorted(uniq, comps[h])
            add = ((~pinned[:, local]) * size[local]).sum(axis=1)  # bytes this pin would add per replica
            load = ((~resident[:, local] & ~pinned[:, local]) * size[local]).sum(axis=1)  # bytes to fetch
            cand = np.flatnonzero(used + add <= budget)
            if cand.size == 0 and self.spill:  # no room in the pool: the least pinned replicas outside
                cand = np.flatnonzero(~in_pool & (used + add <= pin_budget))
                order = cand[np.lexsort((cand, load[cand], used[cand]))]
            else:
                order = cand[np.lexsort((cand, used[cand], add[cand], load[cand]))]  # least load, then sharing
            if cand.size == 0:
                continue
            chosen = order[: wanted[h]]
            k_got[h] = chosen.size
            used[chosen] += add[chosen]
            pinned[np.ix_(chosen, local)] = True
            pin_p.append(np.full(chosen.size, p, _I))
            pin_r.append(chosen.astype(_I))
        pin_pipeline = np.concatenate(pin_p) if pin_p else np.zeros(0, _I)
        pin_replica = np.concatenate(pin_r) if pin_r else np.zeros(0, _I)
        pool = np.full(R, SHARED, np.int8)
        if self.band_pools and hot.size:
            pool[in_pool] = HOT
        fb, fl = self._fused_pairs(ctx)
        return PlacementPlan(hot.astype(_I), k_got, pin_pipeline, pin_replica, fb, fl, pool, wanted)

    def _hot_pool(self, ctx: PlacementContext, hot: np.ndarray, wanted: np.ndarray, uniq: np.ndarray,
                  comps: list[np.ndarray], resident: np.ndarray) -> np.ndarray:
        """Replicas of the hot pool (bool (R,)): with band pools, as many as the hot band's share
        of demand asks for (never fewer than the largest k), those already holding the most
        demand-weighted hot bytes first, so the rest stay free for warm and cold traffic;
        without band pools, every replica."""
        R = ctx.snapshot.replicas.n
        if not self.band_pools or hot.size == 0:
            return np.ones(R, dtype=bool)
        total = float(ctx.demand.sum())
        share = float(ctx.demand[hot].sum()) / total if total > 0 else 1.0
        size = math.ceil(share * _scale(R, ctx.demand_replicas) * self.overprovision - 1e-9)
        size = min(R, max(size, int(wanted.max())))
        weight = np.zeros(uniq.size)  # demand-weighted bytes per hot component
        sizes = ctx.snapshot.components.size_bytes[uniq].astype(np.float64)
        for h, p in enumerate(hot.tolist()):
            local = np.searchsorted(uniq, comps[h])
            weight[local] += ctx.demand[p] * sizes[local]
        held = resident @ weight
        idx = np.arange(R)
        out = np.zeros(R, dtype=bool)
        out[np.lexsort((idx, -held))[:size]] = True
        return out

    def _fused_pairs(self, ctx: PlacementContext) -> tuple[np.ndarray, np.ndarray]:
        """Top ``fuse_top`` (base, LoRA) pairs by demand over pipelines with exactly one LoRA."""
        if self.fuse_top == 0:
            return np.zeros(0, _I), np.zeros(0, _I)
        kind = ctx.snapshot.components.kind
        pairs: dict[tuple[int, int], float] = {}
        top = np.flatnonzero(ctx.demand > 0)
        # only the busiest pipelines can hold a top pair: bound the Python loop
        top = top[np.argsort(-ctx.demand[top], kind="stable")[: max(64, 20 * self.fuse_top)]]
        for p in top.tolist():
            c = np.asarray(ctx.pipeline_components[p])
            loras = c[kind[c] == LORA]
            bases = c[kind[c] == BASE]
            if loras.size == 1 and bases.size == 1:
                key = (int(bases[0]), int(loras[0]))
                pairs[key] = pairs.get(key, 0.0) + float(ctx.demand[p])
        ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[: self.fuse_top]
        return (np.array([b for (b, _), _ in ranked], _I), np.array([lo for (_, lo), _ in ranked], _I))

