"""Autoscaling: Ray's queue-length rule, the EWMA forecast, one set of guardrails, and a
cache-aware scale-down that keeps the replicas whose caches are worth most."""

from __future__ import annotations

import numpy as np
import pytest
from policy_factories import components, replicas

from policies.autoscaling import (AUTOSCALING, SCALE_DOWN, AutoscalingContext, Guardrails, cache_aware_scale_down,
                                  cache_value)
from policies.snapshot import BASE, HOST, LORA, ClusterSnapshot, freeze


def ctx(now, target, requests=0.0, rate=0.0, service=1.0, state=None, current=None) -> AutoscalingContext:
    return AutoscalingContext(now, target if current is None else current, target, requests, rate, service,
                              state or {})


def test_ray_queue_length_is_requests_over_target_ongoing():
    policy = AUTOSCALING.create("ray-queue-length")
    assert policy(ctx(0.0, 3, requests=15.0))[0] == pytest.approx(7.5)  # target_ongoing_requests = 2
    assert AUTOSCALING.create("ray-queue-length", target_ongoing_requests=5)(ctx(0.0, 3, requests=15.0))[0] == 3


def test_ray_defaults_wait_30s_up_and_600s_down():
    g = Guardrails.ray_defaults(1, 10)(AUTOSCALING.create("ray-queue-length"))
    state, target, ups = {}, 2, []
    for t in range(0, 60, 10):  # 12 requests on 2 replicas wants 6
        target, state = g(ctx(float(t), target, requests=12.0, state=state))
        ups.append(target)
    assert ups == [2, 2, 2, 6, 6, 6]  # after 30 s of wanting more
    downs = []
    for t in range(100, 800, 100):  # idle: wants 1 (never 0 from more than one replica)
        target, state = g(ctx(float(t), target, requests=0.0, state=state))
        downs.append(target)
    assert downs == [6, 6, 6, 6, 6, 6, 1]  # only after 600 s of wanting less


def test_a_change_of_mind_restarts_the_delay():
    g = Guardrails(1, 10, upscale_delay_s=30, downscale_delay_s=30)(AUTOSCALING.create("ray-queue-length"))
    state, target = {}, 4
    target, state = g(ctx(0.0, target, requests=20.0, state=state))  # wants 10
    target, state = g(ctx(20.0, target, requests=8.0, state=state))  # wants 4: no move, timer reset
    target, state = g(ctx(40.0, target, requests=20.0, state=state))
    assert target == 4
    target, state = g(ctx(70.0, target, requests=20.0, state=state))
    assert target == 10


def test_bounds_hold_and_cold_start_is_immediate():
    g = Guardrails(2, 5, upscale_delay_s=1000, downscale_delay_s=0)(AUTOSCALING.create("ray-queue-length"))
    assert g(ctx(0.0, 0, requests=100.0, current=0))[0] == 2  # cold start: no delay, within bounds
    target, state = g(ctx(0.0, 3, requests=0.0))
    assert target == 2  # down immediately, but not below min
    target, state = 5, {}
    for t in range(0, 5000, 500):
        target, state = g(ctx(float(t), target, requests=1000.0, state=state))
        assert target == 5  # never above max


def test_hysteresis_ignores_noise_around_the_target():
    g = Guardrails(1, 20, 0, 0, hysteresis=0.2)(AUTOSCALING.create("ray-queue-length"))
    assert g(ctx(0.0, 10, requests=2 * 11.5))[0] == 10  # 11.5 within +20%
    assert g(ctx(0.0, 10, requests=2 * 8.5))[0] == 10  # 8.5 within -20%
    assert g(ctx(0.0, 10, requests=2 * 12.5))[0] == 13
    assert g(ctx(0.0, 10, requests=2 * 7.5))[0] == 8


def test_ewma_forecast_with_headroom():
    policy = AUTOSCALING.create("ewma-headroom", alpha=0.5, headroom=0.25)
    d1, s = policy(ctx(0.0, 1, rate=4.0, service=2.0))
    assert d1 == pytest.approx(4.0 * 2.0 * 1.25) and s["ewma_rate"] == 4.0
    d2, s = policy(ctx(10.0, 10, rate=8.0, service=2.0, state=s))
    assert s["ewma_rate"] == pytest.approx(6.0) and d2 == pytest.approx(15.0)


def test_policy_state_round_trips_through_guardrails():
    g = Guardrails(1, 50, 0, 0)(AUTOSCALING.create("ewma-headroom", alpha=0.5, headroom=0.0))
    target, state = g(ctx(0.0, 1, rate=10.0))
    target, state = g(ctx(10.0, target, rate=0.0, state=state))
    assert state["ewma_rate"] == pytest.approx(5.0) and target == 5


COMP = components([BASE, BASE, LORA, LORA])


def test_scale_down_removes_the_least_valuable_cache():
    """Replica 0: base 0 (hot) on GPU. Replica 1: base 1 (less demand), its only copy. Replica 2:
    a LoRA. Replica 3: base 0 in host memory (a copy, but cheaper to lose). The LoRA-only replica
    goes first, the GPU copy of the hottest base last."""
    rep = replicas(4, COMP.n, held={0: [0], 1: [1], 2: [2]})
    rep.tier[3, 0] = HOST
    s = freeze(ClusterSnapshot(0.0, rep, COMP))
    demand = freeze(np.array([10.0, 4.0, 1.0, 1.0]))
    np.testing.assert_allclose(cache_value(s, demand), [10 * 22.6 / 2, 4 * 22.6, 4.6, 10 * (22.6 - 2.26) / 2])
    assert cache_aware_scale_down(s, demand, 1).tolist() == [2]
    assert SCALE_DOWN.create("cache-aware").choose(s, demand, 4).tolist() == [2, 1, 3, 0]
    assert SCALE_DOWN.create("newest-first").choose(s, demand, 2).tolist() == [3, 2]


def test_scale_down_recounts_copies_so_a_last_copy_survives():
    """Two replicas hold base 0, one holds base 1 (less demand). Removing two: one copy of base 0
    goes first (a duplicate is worth half), then base 1, never both copies of base 0."""
    rep = replicas(3, COMP.n, held={0: [0], 1: [0], 2: [1]})
    s = freeze(ClusterSnapshot(0.0, rep, COMP))
    got = cache_aware_scale_down(s, freeze(np.array([6.0, 4.0, 0.0, 0.0])), 2).tolist()
    assert sorted(got) in ([0, 2], [1, 2]) and got[0] in (0, 1)


def test_scale_down_prefers_an_idle_replica_among_equals():
    rep = replicas(3, COMP.n, held={0: [2], 1: [2], 2: [2]}, queue=[3, 0, 2])
    s = freeze(ClusterSnapshot(0.0, rep, COMP))
    assert cache_aware_scale_down(s, freeze(np.ones(4)), 1).tolist() == [1]


def test_a_broken_forecast_fails_loudly():
    g = Guardrails(1, 5, 0, 0)(AUTOSCALING.create("ewma-headroom"))
    with pytest.raises(ValueError, match="ewma-headroom.*nan"):
        g(ctx(0.0, 2, rate=float("nan")))
