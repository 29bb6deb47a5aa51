"""Placement: hot pipelines on k replicas from their demand share, within memory, sharing bases."""

from __future__ import annotations

import numpy as np
import pytest
from policy_factories import GB, components, replicas

from policies.placement import PLACEMENT, PlacementContext
from policies.popularity import bands_by_rank
from policies.snapshot import BASE, HOT, LORA, SHARED, ClusterSnapshot, PipelineIndex, PipelineKey, freeze

# components: bases 0, 1 (6 GB); LoRAs 2..5 (0.3 GB)
COMP = components([BASE, BASE, LORA, LORA, LORA, LORA])


def ctx(keys, demand, n_replicas=10, gpu_gb=40.0, held=None, hot_frac=0.05, warm_frac=0.25) -> PlacementContext:
    index = PipelineIndex()
    for k in keys:
        index.intern(k)
    demand = np.asarray(demand, dtype=np.float64)
    snap = ClusterSnapshot(0.0, replicas(n_replicas, COMP.n, gpu_gb, held=held), COMP)
    return freeze(PlacementContext(snap, demand, bands_by_rank(demand, hot_frac, warm_frac),
                                   [index.components(p) for p in range(len(index))],
                                   np.full(n_replicas, int(gpu_gb * GB), np.int64)))


KEYS = [PipelineKey.of(0, (), (2,)), PipelineKey.of(0, (), (3,)), PipelineKey.of(1, (), (4,)), PipelineKey.of(1)]


def test_k_follows_demand_share_and_stays_within_replicas():
    c = ctx(KEYS, [50, 20, 20, 10], hot_frac=0.5, warm_frac=0.0)  # pipelines 0 and 1 hot
    plan = PLACEMENT.create("popularity-bands").plan(c)
    assert plan.pipelines.tolist() == [0, 1]
    assert plan.wanted_k.tolist() == [5, 2] and plan.k.tolist() == [5, 2]  # ceil(50% x 10), max(2, ceil(20% x 10))
    for p, k in zip(plan.pipelines.tolist(), plan.k.tolist()):
        assert np.count_nonzero(plan.pin_pipeline == p) == k
    big = PLACEMENT.create("popularity-bands", overprovision=3.0).plan(c)
    assert big.k.tolist() == [10, 6]  # bounded by the replica count


def test_prefers_replicas_that_already_hold_the_pipeline():
    c = ctx(KEYS, [50, 20, 20, 10], hot_frac=0.25, warm_frac=0.0, held={7: [0, 2], 8: [0, 2], 3: [0]})
    plan = PLACEMENT.create("popularity-bands", overprovision=0.6).plan(c)  # k = ceil(50% x 10 x 0.6) = 3
    assert plan.pipelines.tolist() == [0] and sorted(plan.pin_replica.tolist()) == [3, 7, 8]
    assert plan.pool[[3, 7, 8]].tolist() == [HOT] * 3 and (plan.pool[[0, 1, 2, 4, 5, 6, 9]] == SHARED).all()


def test_memory_budget_bounds_pins_and_bases_are_shared():
    """7 GB pin budget per replica: one base plus its LoRAs fits, a second base does not."""
    c = ctx(KEYS, [30, 30, 30, 10], n_replicas=2, gpu_gb=10.0, hot_frac=0.75, warm_frac=0.0)
    plan = PLACEMENT.create("popularity-bands", min_replicas=1, pin_fraction=0.7).plan(c)
    by_replica = {r: sorted(plan.pin_pipeline[plan.pin_replica == r].tolist()) for r in range(2)}
    # pipelines 0 and 1 share base 0 (one replica pins both); pipeline 2 needs base 1: the other replica
    assert sorted(by_replica.values()) == [[0, 1], [2]]
    assert plan.k.tolist() == [1, 1, 1] and plan.wanted_k.tolist() == [1, 1, 1]


def test_top_base_lora_pairs_are_flagged_for_fusion():
    keys = [PipelineKey.of(0, (), (2,)), PipelineKey.of(0, (), (2, 3)), PipelineKey.of(1, (), (4,)),
            PipelineKey.of(1), PipelineKey.of(0, (), (5,))]
    c = ctx(keys, [5, 100, 40, 90, 1])
    plan = PLACEMENT.create("popularity-bands", fuse_top=2).plan(c)
    # the two-LoRA and the LoRA-less pipelines cannot be pre-fused; (1, 4) then (0, 2) by demand
    assert list(zip(plan.fused_base.tolist(), plan.fused_lora.tolist())) == [(1, 4), (0, 2)]
    assert PLACEMENT.create("popularity-bands", fuse_top=0).plan(c).fused_base.size == 0


def test_none_pins_nothing():
    plan = PLACEMENT.create("none").plan(ctx(KEYS, [50, 20, 20, 10]))
    assert plan.pin_pipeline.size == 0 and (plan.pool == SHARED).all()


def test_hot_pool_is_sized_by_hot_demand_and_pins_stay_inside():
    """Hot pipelines 0, 1 take 70% of demand: a 7-replica hot pool out of 10, led by the replicas
    already holding hot weights; 3 replicas stay SHARED for warm and cold traffic."""
    c = ctx(KEYS, [50, 20, 20, 10], hot_frac=0.5, warm_frac=0.0, held={9: [0, 2]})
    plan = PLACEMENT.create("popularity-bands").plan(c)
    assert np.count_nonzero(plan.pool == HOT) == 7 and plan.pool[9] == HOT
    assert (plan.pool[plan.pin_replica] == HOT).all()
    assert 9 in plan.pin_replica[plan.pin_pipeline == 0]
    off = PLACEMENT.create("popularity-bands", band_pools=False).plan(c)
    assert (off.pool == SHARED).all() and off.k.tolist() == [5, 2]


def test_k_from_the_replicas_the_demand_keeps_busy():
    """On a mostly idle cluster a hot pipeline's share is a share of the busy replicas."""
    c = ctx(KEYS, [50, 20, 20, 10], hot_frac=0.5, warm_frac=0.0)
    policy = PLACEMENT.create("popularity-bands", min_replicas=1)
    few = policy.plan(PlacementContext(c.snapshot, c.demand, c.bands, c.pipeline_components, c.gpu_bytes,
                                       demand_replicas=4.0))
    assert few.wanted_k.tolist() == [2, 1]  # ceil(50% x 4), ceil(20% x 4)
    many = policy.plan(PlacementContext(c.snapshot, c.demand, c.bands, c.pipeline_components, c.gpu_bytes,
                                        demand_replicas=1000.0))
    assert many.wanted_k.tolist() == [5, 2]  # capped at the 10 replicas there are
    with pytest.raises(ValueError, match="demand_replicas"):
        policy.plan(PlacementContext(c.snapshot, c.demand, c.bands, c.pipeline_components, c.gpu_bytes,
                                     demand_replicas=-1.0))


def test_spill_pins_a_hot_pipeline_the_pool_has_no_room_for_outside_it():
    """Pipelines 0 and 1 (bases 0 and 1, 6 GB each) are hot, 49% of demand: a hot pool of two
    replicas, those holding base 0, each with room for one base under its 9 GB pin budget. Base 0
    takes both; base 1 fits in the pool nowhere: without spill it is pinned nowhere, with spill on
    the two empty replicas outside the pool."""
    keys = [PipelineKey.of(0), PipelineKey.of(1), PipelineKey.of(0, (), (2,)), PipelineKey.of(1, (), (3,)),
            PipelineKey.of(0, (), (4,))]
    c = ctx(keys, [30, 19, 17, 17, 17], n_replicas=4, gpu_gb=15.0, held={0: [0], 1: [0]}, hot_frac=0.4,
            warm_frac=0.0)
    policy = PLACEMENT.create("popularity-bands", min_replicas=2, fuse_top=0)
    plan = policy.plan(c)
    assert plan.pool.tolist() == [HOT, HOT, SHARED, SHARED]
    assert sorted(plan.pin_replica[plan.pin_pipeline == 0].tolist()) == [0, 1]
    assert plan.pin_replica[plan.pin_pipeline == 1].size == 0  # hot, yet pinned nowhere
    spilled = PLACEMENT.create("popularity-bands", min_replicas=2, fuse_top=0, spill=True).plan(c)
    assert sorted(spilled.pin_replica[spilled.pin_pipeline == 1].tolist()) == [2, 3]
    assert sorted(spilled.pin_replica[spilled.pin_pipeline == 0].tolist()) == [0, 1]  # the pool's as before
    assert spilled.pool.tolist() == plan.pool.tolist()
