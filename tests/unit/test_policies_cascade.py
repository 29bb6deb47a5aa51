"""Cascade allocation: the MILP against brute force, monotonicity, the static baseline, contract."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from policies.cascade_allocation import CASCADE, CascadeDecision, CascadeInputs, MilpCascade, StageProfile, \
    fold_discriminator
from policies.cascade_baselines import StaticCascade, enumerate_allocation, quality_from_confidence
from policies.snapshot import freeze

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "diffserve"


def synthetic(demand: float = 10.0, gpus: int = 12, slo: float = 3.0, **kw) -> CascadeInputs:
    """A small cascade where every choice matters: 4 light batches, 3 heavy, 6 thresholds."""
    light = StageProfile(np.array([1, 2, 4, 8]), np.array([0.05, 0.08, 0.14, 0.26]))
    heavy = StageProfile(np.array([1, 2, 4]), np.array([0.5, 0.8, 1.5]))
    t = np.linspace(0.0, 1.0, 6)
    f = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    q = np.array([0.6, 0.75, 0.85, 0.92, 0.96, 0.97])
    return CascadeInputs(demand, gpus, slo, light, heavy, t, f, q, **kw)


def random_instance(rng: np.random.Generator) -> CascadeInputs:
    nl, nh, nt = rng.integers(2, 5), rng.integers(1, 4), rng.integers(3, 8)
    bl = np.sort(rng.choice([1, 2, 4, 8, 16], nl, replace=False))
    bh = np.sort(rng.choice([1, 2, 4, 8], nh, replace=False))
    light = StageProfile(bl, 0.03 + bl * rng.uniform(0.01, 0.04))
    heavy = StageProfile(bh, 0.3 + bh * rng.uniform(0.1, 0.5))
    f = np.sort(np.round(rng.uniform(0, 1, nt), 1))  # rounded: equal deferral at several thresholds
    f[0] = 0.0 if rng.random() < 0.7 else f[0]
    q = np.round(rng.uniform(0, 1, nt), 2)  # not monotone, with ties: the order still must match
    return CascadeInputs(float(np.exp(rng.uniform(np.log(0.5), np.log(3000)))), int(rng.integers(0, 30)),
                         float(rng.uniform(0.5, 6)),
                         light, heavy, np.linspace(0, 1, nt), f, q, queue_factor=float(rng.choice([0.0, 1.0])))


def check_constraints(inp: CascadeInputs, d: CascadeDecision) -> None:
    """What a decision promises: GPUs, throughput for what it serves, latency, grid membership."""
    assert 0 <= d.light_replicas and 0 <= d.heavy_replicas and d.gpus_used <= inp.gpus
    if d.status == "infeasible":
        assert d.gpus_used == 0 and d.served_qps == 0
        return
    assert d.light_batch in inp.light.batch and (d.heavy_batch == 0 or d.heavy_batch in inp.heavy.batch)
    assert inp.thresholds[d.threshold_index] == d.threshold and inp.deferred[d.threshold_index] == d.deferred_fraction
    li = int(np.flatnonzero(inp.light.batch == d.light_batch)[0])
    load = d.served_qps / inp.max_utilization
    assert d.light_replicas * inp.light.throughput[li] >= load * (1 - 1e-6)
    if d.heavy_batch:
        hi = int(np.flatnonzero(inp.heavy.batch == d.heavy_batch)[0])
        assert d.heavy_replicas * inp.heavy.throughput[hi] >= d.deferred_fraction * load * (1 - 1e-6)
    else:
        assert d.deferred_fraction == 0 and d.heavy_replicas == 0
    assert d.expected_latency_s <= inp.slo_s + 1e-9
    assert d.served_qps <= inp.demand_qps * (1 + 1e-9)
    assert (d.status == "best_effort") == (d.served_qps < inp.demand_qps * (1 - 1e-9))


@pytest.mark.parametrize("name", CASCADE.names())
class TestCascadeContract:
    """Every registered cascade allocator: bounds, determinism, inputs never mutated."""

    @pytest.mark.parametrize("demand,gpus", [(0.0, 4), (5.0, 12), (40.0, 12), (500.0, 8), (5.0, 0)])
    def test_bounds(self, name, demand, gpus):
        inp = synthetic(demand, gpus)
        check_constraints(inp, CASCADE.create(name).allocate(inp))

    def test_deterministic_and_pure(self, name):
        inp = synthetic(25.0, 20)
        before = {f: np.copy(getattr(inp, f)) for f in ("thresholds", "deferred", "quality")}
        before |= {"lb": inp.light.batch.copy(), "ll": inp.light.latency_s.copy(), "hl": inp.heavy.latency_s.copy()}
        a = CASCADE.create(name).allocate(inp)
        b = CASCADE.create(name).allocate(freeze(inp))  # read-only arrays: any write would raise
        assert a == b
        after = {f: getattr(inp, f) for f in ("thresholds", "deferred", "quality")}
        after |= {"lb": inp.light.batch, "ll": inp.light.latency_s, "hl": inp.heavy.latency_s}
        for key, v in before.items():
            np.testing.assert_array_equal(after[key], v, err_msg=f"{name} mutated {key}")


def test_milp_equals_brute_force_on_random_instances():
    rng = np.random.default_rng(7)
    statuses = set()
    for _ in range(80):
        inp = random_instance(rng)
        got, want = MilpCascade().allocate(inp), enumerate_allocation(inp)
        assert got == want, inp
        check_constraints(inp, got)
        statuses.add(got.status)
    assert statuses == {"optimal", "best_effort", "infeasible"}  # the sample covers every regime


def test_more_gpus_never_lowers_quality_and_more_demand_never_raises_it():
    milp = MilpCascade()
    by_gpus = [milp.allocate(synthetic(12.0, g)) for g in range(4, 40, 3)]
    q = [d.expected_quality for d in by_gpus if d.status == "optimal"]
    assert len(q) >= 8 and all(b >= a for a, b in zip(q, q[1:])) and q[-1] > q[0]
    by_demand = [milp.allocate(synthetic(d, 16)) for d in (1, 3, 6, 10, 15, 22, 30, 45, 70)]
    q = [d.expected_quality for d in by_demand]
    assert all(b <= a for a, b in zip(q, q[1:])) and q[-1] < q[0]


def test_abundant_gpus_pick_the_best_threshold_and_fewest_gpus():
    inp = synthetic(10.0, 500)
    d = MilpCascade().allocate(inp)
    assert d.status == "optimal" and d.threshold_index == int(np.argmax(inp.quality))
    assert d.gpus_used < 500  # the tie-break keeps only what the load needs
    fewer = MilpCascade().allocate(replace(inp, gpus=d.gpus_used - 1))
    assert fewer.expected_quality < d.expected_quality  # so it really was the minimum for that quality


def test_demand_over_capacity_is_best_effort_at_max_throughput():
    inp = synthetic(1000.0, 6)
    d = MilpCascade().allocate(inp)
    assert d.status == "best_effort" and d.deferred_fraction == 0 and d.gpus_used == 6
    # light only, best batch within the SLO: 6 GPUs x 8 / 0.26 s
    assert d.served_qps == pytest.approx(6 * 8 / 0.26, rel=1e-6)
    assert MilpCascade().allocate(replace(inp, demand_qps=d.served_qps)).status == "optimal"


def test_utilization_cap_and_registry():
    assert {"milp", "static"} <= set(CASCADE.names())
    inp = synthetic(20.0, 40)
    full, capped = MilpCascade().allocate(inp), MilpCascade().allocate(replace(inp, max_utilization=0.5))
    check_constraints(replace(inp, max_utilization=0.5), capped)
    assert capped.expected_quality <= full.expected_quality and capped.served_qps == 20.0


def test_slo_below_any_batch_is_infeasible():
    d = MilpCascade().allocate(synthetic(5.0, 10, slo=0.05))
    assert d.status == "infeasible" and d.gpus_used == 0


def test_static_never_beats_milp_when_both_meet_demand():
    milp, static, both = MilpCascade(), StaticCascade(), 0
    for g in (2, 4, 8, 16, 32):
        for demand in (1, 4, 8, 16, 32, 64):
            inp = synthetic(float(demand), g)
            m, s = milp.allocate(inp), static.allocate(inp)
            check_constraints(inp, s)
            if m.status == "optimal" and s.status == "feasible":
                both += 1
                assert m.expected_quality >= s.expected_quality
            if s.status == "feasible":
                assert m.status == "optimal"
    assert both >= 5


def test_static_split_is_proportional_and_demand_independent():
    a, b = StaticCascade().allocate(synthetic(1.0, 10)), StaticCascade().allocate(synthetic(30.0, 10))
    assert (a.light_replicas, a.heavy_replicas, a.threshold) == (b.light_replicas, b.heavy_replicas, b.threshold)
    assert a.gpus_used == 10 and a.deferred_fraction in (0.4, 0.6)


def test_queue_delay_and_discriminator_tighten_latency():
    inp = synthetic(10.0, 40)
    loose = MilpCascade().allocate(inp)
    tight = MilpCascade().allocate(replace(inp, queue_delay_s=1.0))
    assert tight.expected_latency_s <= 3.0 and tight.heavy_batch <= loose.heavy_batch
    disc = StageProfile(np.array([1, 8]), np.array([0.01, 0.03]))
    folded = fold_discriminator(inp.light, disc)
    np.testing.assert_allclose(folded.latency_s - inp.light.latency_s, [0.01, 0.01 + 0.02 / 7, 0.01 + 0.06 / 7, 0.03])


def test_quality_from_confidence():
    conf = np.array([0.9, 0.5, 0.7, 0.3])
    q = quality_from_confidence(np.array([0.0, 0.25, 0.5, 1.0]), conf)
    np.testing.assert_allclose(q, [0.6, (0.25 * 4 + 0.9 + 0.7 + 0.5) / 4, (2 + 0.9 + 0.7) / 4, 1.0])


def test_inputs_validation_names_fields():
    with pytest.raises(ValueError, match="thresholds, deferred and quality"):
        MilpCascade().allocate(replace(synthetic(), quality=np.ones(3)))
    with pytest.raises(ValueError, match="heavy: batch and latency_s"):
        MilpCascade().allocate(replace(synthetic(), heavy=StageProfile(np.array([1, 2]), np.array([0.5]))))
    with pytest.raises(ValueError, match="max_utilization"):
        MilpCascade().allocate(synthetic(max_utilization=0.0))


@pytest.fixture(scope="module")
def diffserve_app():
    if not DATA.is_dir():
        pytest.skip(f"DiffServe data not found at {DATA} (../shared/data is not checked in)")
    from trace_replay.simulator.cascade_inputs import diffserve_inputs

    return diffserve_inputs(DATA)


def test_real_diffserve_profiles(diffserve_app):
    """SD-Turbo -> SD1.5 (5 s SLO): constraints hold, MILP = brute force, quality monotone in GPUs."""
    for gpus in (16, 64, 300):
        last = None
        for demand in (1.0, 5.0, 20.0, 80.0, 400.0, 2000.0, 10000.0):
            inp = diffserve_app(demand, gpus)
            d = MilpCascade().allocate(inp)
            check_constraints(inp, d)
            assert d == enumerate_allocation(inp)
            assert last is None or d.expected_quality <= last
            last = d.expected_quality
    from trace_replay.simulator.cascade_inputs import diffserve_inputs

    fine = diffserve_inputs(DATA, grid=201)  # DiffServe's controller grid, f interpolated
    for demand in (3.0, 30.0, 300.0):
        inp = fine(demand, 32)
        assert MilpCascade().allocate(inp) == enumerate_allocation(inp)
    rich = diffserve_app(10.0, 300)
    assert MilpCascade().allocate(rich).expected_quality == rich.quality.max()
    assert MilpCascade().allocate(diffserve_app(10000.0, 16)).status == "best_effort"
