"""CascadePlanner: when it re-solves (period, jump, hysteresis), that it sees only the past, the
per-query overload rule, and the decision transforms it applies after the MILP."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from policies.cascade_allocation import CascadeDecision, CascadeInputs, MilpCascade, StageProfile
from policies.cascade_planner import (CascadePlanner, PlannerConfig, defer_for_quality, expected_heavy_wait_s,
                                      hold_light, should_defer, spread_spare)


def template(gpus: int = 24) -> CascadeInputs:
    """SD-Turbo -> SD 1.5-like profiles (DiffServe's ampere rows), five thresholds."""
    light = StageProfile(np.array([1, 2, 4, 8]), np.array([0.10, 0.15, 0.22, 0.41]))
    heavy = StageProfile(np.array([1, 2, 4]), np.array([1.78, 2.16, 3.68]))
    f = np.array([0.0, 0.3, 0.5, 0.7, 1.0])
    return CascadeInputs(0.0, gpus, 5.0, light, heavy, np.linspace(0, 1, 5), f, f.copy())


class RecordingMilp(MilpCascade):
    """The real MILP, remembering the demand of every solve."""

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "demands", [])

    def allocate(self, inp, clock=None):
        self.demands.append(inp.demand_qps)
        return super().allocate(inp, clock)


def feed(planner: CascadePlanner, rates: list[float], step: float = 1.0) -> list[tuple[float, CascadeDecision]]:
    """Observe `rates[i] * step` arrivals at t = (i + 1) step; the decisions returned, with times."""
    out = []
    for i, r in enumerate(rates):
        t = (i + 1) * step
        d = planner.observe(t, int(round(r * step)))
        if d is not None:
            out.append((t, d))
    return out


def test_resolves_on_the_period():
    """A slow rise (under the jump ratio) re-solves exactly once per period after the first plan."""
    alloc = RecordingMilp()
    p = CascadePlanner(template(), PlannerConfig(period_s=5.0, down_band=0.0), allocator=alloc)
    rates = [10.0 * 1.01 ** i for i in range(21)]
    times = [t for t, _ in feed(p, rates)]
    assert times == [1.0, 6.0, 11.0, 16.0, 21.0]
    assert len(alloc.demands) == 5 and alloc.demands == sorted(alloc.demands)
    assert p.demand_qps == pytest.approx(alloc.demands[-1])


def test_a_new_gpu_count_resolves_at_once_and_keeps_the_demand_estimate():
    alloc = RecordingMilp()
    p = CascadePlanner(template(gpus=24), PlannerConfig(period_s=5.0, spread_spare=False), allocator=alloc)
    feed(p, [10.0] * 7)  # solved at t = 1 and 6
    rate = p.rate_estimate_qps
    solves = len(alloc.demands)
    d = p.observe(7.5, 5, gpus=4)  # mid-period, steady rate: only the GPUs changed
    assert d is not None and len(alloc.demands) == solves + 1
    assert d.gpus_used <= 4 and p.rate_estimate_qps == pytest.approx(rate, rel=0.05)
    assert p.observe(8.0, 5, gpus=4) is None  # the same count again is no reason to solve
    with pytest.raises(ValueError, match="gpus"):
        p.observe(9.0, 5, gpus=-1)


def test_resolves_early_on_a_jump():
    alloc = RecordingMilp()
    p = CascadePlanner(template(), PlannerConfig(period_s=5.0, jump_ratio=1.3), allocator=alloc)
    got = feed(p, [5.0] * 8 + [20.0] * 2)
    # first plan at t=1; at the period (t=6) demand is unchanged, so the plan stands; the jump is
    # seen at t=9, before the next period (t=11)
    assert [t for t, _ in got] == [1.0, 9.0] and len(alloc.demands) == 2
    assert got[-1][1].served_qps > 2 * got[0][1].served_qps
    assert p.demand_qps >= 20.0 * 0.5  # the fast estimate has mostly caught up within a second


def test_hysteresis_keeps_the_plan_on_a_small_drop():
    alloc = RecordingMilp()
    p = CascadePlanner(template(), PlannerConfig(down_band=0.15, ewma_half_life_s=0.5, fast_half_life_s=0.5),
                       allocator=alloc)
    feed(p, [10.0] * 6)
    n = len(alloc.demands)
    planned = p.demand_qps
    assert p.observe(7.0, 9) is None and p.observe(11.0, 36) is None  # ~9 qps: within 15% below the plan
    assert len(alloc.demands) == n and p.demand_qps == planned
    assert p.observe(16.0, 20) is not None  # 4 qps: well below the band, re-plans down
    assert p.demand_qps < planned


def test_decision_at_t_does_not_depend_on_arrivals_after_t():
    base = [8.0, 9.0, 10.0, 12.0, 11.0, 13.0, 12.0]
    a = feed(CascadePlanner(template()), base + [2.0] * 10)
    b = feed(CascadePlanner(template()), base + [40.0] * 10)
    cut = float(len(base))
    assert [x for x in a if x[0] <= cut] == [x for x in b if x[0] <= cut]
    assert [x for x in a if x[0] > cut] != [x for x in b if x[0] > cut]  # the tails do differ


def test_backlog_raises_the_planned_demand():
    calm, behind = CascadePlanner(template()), CascadePlanner(template())
    calm.observe(1.0, 10)
    behind.observe(1.0, 10, queue_delay_s=4.0)
    cfg = PlannerConfig()
    assert calm.demand_qps == pytest.approx(10 * cfg.headroom)
    assert behind.demand_qps == pytest.approx(10 * cfg.headroom + 4.0 * 10 / cfg.drain_s)


def test_measured_profiles_replace_the_template():
    alloc = RecordingMilp()
    p = CascadePlanner(template(), allocator=alloc)
    slow = StageProfile(np.array([1, 2]), np.array([2.2, 2.4]))  # a slower heavy stage than profiled
    first = p.observe(1.0, 10)
    again = p.observe(6.0, 60, heavy=slow)
    assert first is not None and again is not None and again.heavy_batch in (1, 2)
    light = template().light
    lat = lambda prof, b: float(prof.latency_s[list(prof.batch).index(b)])  # noqa: E731
    # the modelled latency (2 x (light + heavy batch)) is the measured profile's, not the template's
    assert again.expected_latency_s == pytest.approx(2 * (lat(light, again.light_batch) + lat(slow, again.heavy_batch)))
    assert first.expected_latency_s == pytest.approx(2 * (lat(light, first.light_batch) + lat(template().heavy, 2)))


def test_mix_quality_pulls_the_answer_mix_to_the_best_share():
    shares, quality = np.array([0.0, 0.4, 1.0]), -np.array([18.55, 16.79, 22.77])
    p = CascadePlanner(template(), share_quality=(shares, quality))
    p.observe(1.0, 5)
    assert p.plan.deferred_fraction == pytest.approx(0.7)  # 30% light: the grid point nearest 40%
    q = CascadePlanner(template(), share_quality=(shares, quality))
    q.observe(1.0, 5, answered_light=5000, answered_heavy=0)  # a past answered almost all light
    assert q.plan.deferred_fraction == 1.0  # defer everything for a while to pull the mix back


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="period_s"):
        PlannerConfig(period_s=0)
    with pytest.raises(ValueError, match="headroom"):
        PlannerConfig(headroom=0.5)
    with pytest.raises(ValueError, match="queue_factor"):
        PlannerConfig(queue_factor=-1)
    with pytest.raises(ValueError, match="time went backwards"):
        p = CascadePlanner(template())
        p.observe(2.0, 1)
        p.observe(1.0, 1)


def test_spread_spare_fills_the_cluster_by_stage_load():
    inp = replace(template(gpus=30), demand_qps=8.0)
    d = MilpCascade().allocate(inp)
    assert d.gpus_used < 30
    s = spread_spare(d, inp)
    assert s.gpus_used == 30 and s.light_replicas >= d.light_replicas and s.heavy_replicas >= d.heavy_replicas
    assert s.heavy_replicas > s.light_replicas  # heavy carries most of the GPU-seconds


def test_defer_for_quality_gives_the_rest_to_heavy_at_the_best_threshold():
    inp = replace(template(gpus=8), demand_qps=30.0)
    d = MilpCascade().allocate(inp)
    assert d.deferred_fraction < 1.0
    raised = defer_for_quality(d, inp)
    assert raised.deferred_fraction == 1.0 and raised.light_replicas == d.light_replicas
    assert raised.gpus_used == 8 and raised.heavy_batch > 0


def test_expected_heavy_wait_and_should_defer():
    # two replicas free at 1 s and 3 s from now, batch 2 of 2 s
    free = np.array([11.0, 13.0])
    assert expected_heavy_wait_s(10.0, free, 0, 2, 2.0) == pytest.approx(1.0)
    assert expected_heavy_wait_s(10.0, free, 2, 2, 2.0) == pytest.approx(3.0)
    assert expected_heavy_wait_s(10.0, free, 4, 2, 2.0) == pytest.approx(3.0)  # replica 0 again, 2 s later
    assert expected_heavy_wait_s(10.0, np.array([]), 0, 2, 2.0) == np.inf
    assert should_defer(0.2, 0.5, now_s=10.0, arrival_s=9.0, slo_s=5.0, heavy_wait_s=1.0, heavy_latency_s=2.0)
    assert not should_defer(0.2, 0.5, now_s=10.0, arrival_s=9.0, slo_s=5.0, heavy_wait_s=3.0, heavy_latency_s=2.0)
    assert not should_defer(0.7, 0.5, now_s=10.0, arrival_s=9.0, slo_s=5.0, heavy_wait_s=0.0, heavy_latency_s=2.0)


def test_hold_light_uses_the_largest_light_batch_and_keeps_peak_replicas():
    inp = replace(template(gpus=10), demand_qps=5.0)
    d = MilpCascade().allocate(inp)
    held = hold_light(d, inp, held_demand_qps=5.0, heavy_floor=d.heavy_replicas)
    # heavy batch 2 (2.16 s) leaves 2.5 - 2.16 s for the light batch: 4 (0.22 s) fits, 8 does not
    assert d.heavy_batch == 2 and held.light_batch == 4 and held.expected_latency_s <= inp.slo_s
    peak = hold_light(d, inp, held_demand_qps=60.0, heavy_floor=1)  # 60 qps needs 4 light at 18.2 qps
    assert peak.light_replicas == 4 and peak.gpus_used <= 10 and peak.heavy_replicas >= 1


def test_light_stage_holds_replicas_after_a_peak():
    quick = dict(ewma_half_life_s=1.0, fast_half_life_s=1.0)  # demand itself falls within seconds
    p = CascadePlanner(template(gpus=30), PlannerConfig(light_hold_half_life_s=60.0, **quick))
    feed(p, [60.0] * 5)
    at_peak = p.plan.light_replicas
    feed_after = [(t, d) for t, d in ((5.0 + i, p.observe(5.0 + i, 5)) for i in range(1, 16)) if d is not None]
    assert feed_after and feed_after[-1][1].served_qps < 20  # re-planned down for the quiet demand
    assert p.plan.light_replicas == at_peak >= 4  # the light stage kept its peak replicas
    short = CascadePlanner(template(gpus=30), PlannerConfig(light_hold_half_life_s=0.5, **quick))
    feed(short, [60.0] * 5)
    for i in range(1, 16):
        short.observe(5.0 + i, 5)
    assert short.plan.light_replicas < at_peak  # a short memory lets it go
