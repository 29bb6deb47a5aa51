"""The coordinator's pure control core (policies/coordination.py): re-plan cadence, pins from
placement, pins before prefetch, and the prefetch accounting fix (used only while resident)."""

from __future__ import annotations

import numpy as np
import pytest

from policies.coordination import Coordination
from policies.snapshot import BASE, GPU, HOST, HOT, LORA, REMOTE, ComponentTable

GB = 1_000_000_000
# components 0..3 are bases (2 GB), 4..5 LoRAs; pipelines: 0 = base 0, 1 = base 1, 2 = base 2 + LoRA 4
KIND = np.array([BASE] * 4 + [LORA] * 2, np.int8)
PIPES = [np.array([0]), np.array([1]), np.array([2, 4]), np.array([3]), np.array([3, 5])]


def table() -> ComponentTable:
    size = np.where(KIND == BASE, 2 * GB, GB // 10).astype(np.int64)
    cost = np.zeros((KIND.size, 4))
    cost[:, 1], cost[:, 2], cost[:, 3] = 0.5, 2.0, np.where(KIND == BASE, 8.0, 1.0)
    return ComponentTable(KIND, size, cost)


def core(**kw) -> Coordination:
    args = dict(replan_requests=10, replan_max_s=100.0, prefetch_interval_s=0.0, reward_window_s=50.0,
                min_free_bytes=0.0, popularity_args={"half_life_s": 600.0, "hot_frac": 0.25,
                                                     "warm_frac": 0.5, "min_demand": 0.0})
    args.update(kw)
    return Coordination(**args)


def test_replan_waits_for_enough_requests_or_the_max_interval():
    c = core()
    st = c.new_state(2, table(), PIPES, gpu_bytes=[10 * GB, 10 * GB])
    assert c.tick(st, 0.0) is not None  # the first tick plans
    for i in range(9):
        c.routed(st, 0, 0, 1.0 + i)
    assert c.tick(st, 20.0) is None  # 9 requests, 20 s: not yet
    c.routed(st, 0, 0, 21.0)
    assert c.tick(st, 22.0) is not None  # the 10th request
    assert c.tick(st, 50.0) is None and c.tick(st, 122.0) is not None  # then the max interval


def test_a_hot_pipeline_is_pinned_on_two_replicas_and_loaded_before_any_prefetch():
    c = core()
    st = c.new_state(3, table(), PIPES, gpu_bytes=[10 * GB] * 3)
    for i in range(30):
        c.routed(st, i % 3, 0, float(i))  # pipeline 0 is most of the demand
    for p in (1, 2, 3, 4):
        c.routed(st, 0, p, 30.0 + p)
    plan = c.tick(st, 40.0)
    holders = [r for r in range(3) if 0 in plan.pins[r]]
    assert len(holders) >= 2 and set(plan.lacking) >= set(holders)
    r = holders[0]
    load = c.idle(st, r, 41.0, 10 * GB, np.random.default_rng(0))
    assert not load.prefetch and 0 in load.components  # pinned components first, not a prefetch
    assert set(load.components) == set(plan.pins[r])
    c.tiers_changed(st, r, list(load.components), [GPU] * len(load.components), 42.0)
    assert c.idle(st, r, 43.0, 10 * GB, np.random.default_rng(0)) is None or \
        c.idle(st, r, 43.0, 10 * GB, np.random.default_rng(0)).prefetch  # nothing pinned is lacking now
    assert plan.bands[0] == HOT


def warm_state(c: Coordination):
    """Two replicas; pipeline 2 (base 2 + LoRA 4) warm and likely to come back; replica 1 empty."""
    st = c.new_state(2, table(), PIPES, gpu_bytes=[10 * GB] * 2)
    for i in range(40):
        c.routed(st, 0, 0, i * 0.1)
    for i in range(20):
        c.routed(st, 0, 2, 4.0 + i * 0.1)
    c.routed(st, 0, 1, 6.5)
    c.routed(st, 0, 3, 6.6)
    c.tick(st, 7.0)
    assert 2 in st.warm.tolist()
    return st


def prefetch_pipeline_2(c: Coordination, st) -> None:
    load = c.idle(st, 1, 8.0, 10 * GB, np.random.default_rng(0))
    if not load.prefetch:  # the hot pipeline's pin comes first (min_replicas = 2)
        c.tiers_changed(st, 1, list(load.components), [GPU] * len(load.components), 8.0)
        load = c.idle(st, 1, 8.0, 10 * GB, np.random.default_rng(0))
    assert load is not None and load.prefetch and 2 in load.arms and {2, 4} <= set(load.components)
    c.tiers_changed(st, 1, list(load.components), [GPU] * len(load.components), 8.0)
    c.prefetch_loaded(st, 1, 9.0 * len(load.arms))  # 9 s per fetched pipeline


@pytest.mark.parametrize("held", [False, True])
def test_a_warm_pipeline_another_replica_holds_is_offered_only_when_asked(held):
    """A second copy moves no load off a request's path (the router sends it to the holder), so
    by default the bandit is offered only pipelines whose base no replica holds on its GPU."""
    c = core(prefetch_held=held)
    st = warm_state(c)
    offers = []
    propose = c.bandit.propose
    c.bandit.propose = lambda offer, stats, rng: offers.append(offer.arms.tolist()) or propose(offer, stats, rng)
    c.tiers_changed(st, 0, [2, 4], [GPU, GPU], 7.5)  # replica 0 holds pipeline 2
    load = c.idle(st, 1, 8.0, 10 * GB, np.random.default_rng(0))
    while load is not None and not load.prefetch:  # pins first
        c.tiers_changed(st, 1, list(load.components), [GPU] * len(load.components), 8.0)
        load = c.idle(st, 1, 8.0, 10 * GB, np.random.default_rng(0))
    assert offers and all((2 in arms) == held for arms in offers)
    if not held:  # nothing else is warm and unheld here: no offer, no prefetch
        assert load is None


def test_a_prefetch_used_while_resident_is_credited_its_load_seconds():
    c = core()
    st = warm_state(c)
    prefetch_pipeline_2(c, st)
    c.routed(st, 1, 2, 10.0)  # pipeline 2 came back to replica 1, copy still on its GPU
    st.since_plan = 10
    c.tick(st, 60.0)  # the 50 s window closed
    assert st.used >= 1 and c.hit_rate(st) > 0
    pulls, rsum = st.stats.pulls[2], st.stats.reward_sum[2]
    assert pulls > 0 and rsum / pulls == pytest.approx(9.0)  # base 8 s + LoRA 1 s off the critical path


def test_a_prefetch_evicted_before_its_pipeline_came_back_is_wasted():
    c = core()
    st = warm_state(c)
    prefetch_pipeline_2(c, st)
    c.tiers_changed(st, 1, [4], [HOST], 9.0)  # the prefetched LoRA was evicted to host memory
    assert 2 not in st.open[1] and st.wasted == 1
    c.routed(st, 1, 2, 10.0)  # it came back, but had to load again: no hit
    st.since_plan = 10
    c.tick(st, 11.0)  # credited at the next plan, before the window would have closed
    pulls, rsum = st.stats.pulls[2], st.stats.reward_sum[2]
    assert pulls > 0 and rsum / pulls == pytest.approx(-9.0) and st.used == 0


def test_an_eviction_after_the_hit_does_not_undo_it():
    c = core()
    st = warm_state(c)
    prefetch_pipeline_2(c, st)
    c.routed(st, 1, 2, 10.0)
    c.tiers_changed(st, 1, [2, 4], [REMOTE, REMOTE], 11.0)
    assert 2 in st.open[1]  # still open, with its hit, until the window ends


def test_a_forgotten_replica_holds_nothing_and_gets_no_pins():
    c = core()
    st = c.new_state(2, table(), PIPES, gpu_bytes=[10 * GB] * 2)
    c.tiers_changed(st, 1, [0, 4], [GPU, HOST], 0.0)
    c.forget_replica(st, 1)
    assert (st.tier[1] == REMOTE).all() and st.gpu_bytes[1] == 0
    for i in range(12):
        c.routed(st, 0, 0, float(i))
    plan = c.tick(st, 20.0)
    assert plan.pins[1] == frozenset()


def test_grow_adds_replicas_and_components():
    c = core()
    st = c.new_state(1, table(), PIPES)
    c.tiers_changed(st, 0, [1], [GPU], 0.0)
    kind = np.append(KIND, BASE).astype(np.int8)
    t = ComponentTable(kind, np.full(kind.size, GB, np.int64), np.ones((kind.size, 4)))
    c.grow(st, n_replicas=3, components=t)
    assert st.tier.shape == (3, 7) and st.tier[0, 1] == GPU and (st.tier[1:] == REMOTE).all()
    assert len(st.open) == len(st.pins) == st.gpu_bytes.size == 3
