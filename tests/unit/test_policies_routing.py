"""Routing: expected latency trades queue wait against load time; Ray's default follows the model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from policy_factories import components, replicas, request

from policies.routing import ROUTING, expected_latency_s
from policies.snapshot import BASE, COLD, HOST, HOT, LORA, SHARED, ClusterSnapshot, PipelineKey, freeze

COMP = components([BASE, BASE, LORA, LORA])  # 22.6 s, 22.6 s, 4.6 s, 4.6 s from remote
KEY = PipelineKey.of(0, (), (2,))  # needs 27.2 s of loading where nothing is held
NOW = 1000.0


def snap(rep) -> ClusterSnapshot:
    return freeze(ClusterSnapshot(NOW, rep, COMP))


@pytest.mark.parametrize("wait,expected", [(0.0, 0), (10.0, 0), (27.0, 0), (27.5, 1), (60.0, 1)])
def test_prefers_the_holder_unless_its_queue_is_longer_than_the_load(wait, expected):
    s = snap(replicas(2, COMP.n, held={0: [0, 2]}, busy_s=[NOW + wait, NOW - 5.0]))
    assert ROUTING.create("least-expected-latency").route(s, request(KEY), np.random.default_rng(0)) == expected


def test_partial_and_host_copies_count():
    rep = replicas(3, COMP.n, held={1: [0]})  # replica 1 lacks only the LoRA
    rep.tier[2, [0, 2]] = HOST  # replica 2 has both in host memory: 2.26 + 0.46 s
    s = snap(rep)
    np.testing.assert_allclose(expected_latency_s(s, request(KEY)), [27.2, 4.6, 2.72])
    assert ROUTING.create("least-expected-latency").route(s, request(KEY), np.random.default_rng(0)) == 2


def test_busy_neighbours_on_a_shared_host_stretch_loads_and_compute():
    """Replica 0 holds the pipeline and is busy for 1.5 s; replica 1 idles on the same machine,
    replica 2 on a machine of its own. Ignoring contention a 1 s load anywhere beats the wait;
    with it, replica 1's load and compute run beside 0's job and cost more than the wait."""
    from dataclasses import replace

    from policies.snapshot import ClusterSnapshot as Snap

    light = components([BASE, BASE, LORA, LORA], remote_s=[0.5] * 4)  # 0.5 s per component
    rep = replicas(3, light.n, held={0: [0, 2]}, busy_s=[NOW + 1.5, NOW - 1, NOW - 1])
    shared = replace(rep, host=np.array([7, 7, 9], np.int64))  # 0 and 1 share a machine; 2 alone
    s = Snap(NOW, shared, light)
    np.testing.assert_array_equal(s.busy_neighbours(), [0, 1, 0])
    req = replace(request(KEY), compute_s=2.0)
    plain = ROUTING.create("least-expected-latency", band_pools=False)
    contended = ROUTING.create("least-expected-latency", band_pools=False, host_contention=0.5)
    np.testing.assert_allclose(expected_latency_s(s, req), [1.5, 1.0, 1.0])
    np.testing.assert_allclose(expected_latency_s(s, req, host_contention=0.5), [1.5, 1.0 + 0.5 * 3.0, 1.0])
    assert plain.route(s, req, np.random.default_rng(0)) in (1, 2)
    assert contended.route(s, req, np.random.default_rng(0)) == 2  # the idle machine, not 0's neighbour
    alone = Snap(NOW, replace(shared, host=np.array([7, 7, 7], np.int64)), light)  # one machine for all
    assert contended.route(alone, req, np.random.default_rng(0)) == 0  # wait behind the holder
    assert not contended.indexable and plain.indexable
    with pytest.raises(ValueError, match="host_contention"):
        ROUTING.create("least-expected-latency", host_contention=-1)


def test_host_slots_hold_a_request_behind_the_replica_that_frees_soonest():
    """Four replicas on one 2-core machine: 0 and 1 compute (drain in 0.4 s and 3 s), 2 and 3
    idle; a request every replica holds. With host_slots 2 the idle ones start only when 0
    drains (0.4 s), the same as waiting behind 0, and the contention price tips it to 0; without
    slots, an idle replica (no wait) wins. A third machine slot (3) lets an idle replica start."""
    from dataclasses import replace

    from policies.snapshot import ClusterSnapshot as Snap

    rep = replicas(4, COMP.n, held={r: [0, 2] for r in range(4)}, busy_s=[NOW + 0.4, NOW + 3.0, NOW - 1, NOW - 1])
    s = Snap(NOW, replace(rep, host=np.array([5, 5, 5, 5], np.int64)), COMP)
    np.testing.assert_allclose(s.slot_wait_s(2), [0.0, 0.0, 0.4, 0.4])
    np.testing.assert_allclose(s.slot_wait_s(3), [0.0, 0.0, 0.0, 0.0])
    req = replace(request(KEY), compute_s=1.0)
    slots = ROUTING.create("least-expected-latency", band_pools=False, host_contention=0.1, host_slots=2)
    np.testing.assert_allclose(expected_latency_s(s, req, 0.1, 2), [0.4 + 0.1, 3.0 + 0.1, 0.4 + 0.2, 0.4 + 0.2])
    assert slots.route(s, req, np.random.default_rng(0)) == 0
    free = ROUTING.create("least-expected-latency", band_pools=False, host_contention=0.1)
    assert free.route(s, req, np.random.default_rng(0)) in (2, 3)
    assert ROUTING.create("least-expected-latency", band_pools=False, host_contention=0.1,
                          host_slots=3).route(s, req, np.random.default_rng(0)) in (2, 3)
    alone = Snap(NOW, replace(rep, host=np.array([5, 5, 6, 6], np.int64)), COMP)  # 2 and 3 elsewhere
    np.testing.assert_allclose(alone.slot_wait_s(2), 0.0)
    assert not slots.indexable
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="host_slots"):
            ROUTING.create("least-expected-latency", host_slots=bad)


def test_band_pools_keep_cold_requests_off_hot_replicas():
    rep = replicas(3, COMP.n, held={0: [0, 2]}, pool=[HOT, SHARED, COLD], busy_s=[0, NOW + 100, NOW + 100])
    s = snap(rep)
    router = ROUTING.create("least-expected-latency")
    assert router.route(s, request(KEY, band=HOT), np.random.default_rng(0)) == 0
    assert router.route(s, request(KEY, band=COLD), np.random.default_rng(0)) in (1, 2)  # not the idle hot one
    assert ROUTING.create("least-expected-latency", band_pools=False).route(
        s, request(KEY, band=COLD), np.random.default_rng(0)) == 0


def test_ties_spread_over_idle_replicas():
    s = snap(replicas(4, COMP.n))
    router = ROUTING.create("least-expected-latency")
    picks = Counter(router.route(s, request(KEY), np.random.default_rng(i)) for i in range(200))
    assert set(picks) == {0, 1, 2, 3}


def test_ray_multiplex_sticks_to_the_holder_while_it_accepts():
    """Ray ignores load cost: the holder wins while under max_ongoing_requests (5), then the
    replicas with the fewest models, by power of two choices on queue length."""
    router = ROUTING.create("ray-multiplex")
    s = snap(replicas(4, COMP.n, held={0: [0, 2], 1: [1], 2: [1, 3]}, queue=[4, 0, 0, 0]))
    assert {router.route(s, request(KEY), np.random.default_rng(i)) for i in range(50)} == {0}
    full = snap(replicas(4, COMP.n, held={0: [0, 2], 1: [1], 2: [1, 3]}, queue=[5, 0, 0, 0]))
    assert {router.route(full, request(KEY), np.random.default_rng(i)) for i in range(50)} == {3}  # fewest models


def test_ray_multiplex_power_of_two_among_holders():
    router = ROUTING.create("ray-multiplex")
    s = snap(replicas(3, COMP.n, held={0: [0, 2], 1: [0, 2]}, queue=[3, 1, 0]))
    assert {router.route(s, request(KEY), np.random.default_rng(i)) for i in range(50)} == {1}
    none_hold = snap(replicas(3, COMP.n, queue=[3, 1, 0]))  # every replica has 0 models: p2c over all
    picks = Counter(router.route(none_hold, request(KEY), np.random.default_rng(i)) for i in range(300))
    assert picks[0] == 0 and picks[2] > picks[1] > 0  # the longest queue never wins a pair


def test_ray_multiplex_matches_the_base_model_by_default():
    """The live app multiplexes on the base-model id; ``match="pipeline"`` needs every component."""
    s = snap(replicas(3, COMP.n, held={2: [0], 1: [1]}, queue=[0, 0, 1]))
    assert ROUTING.create("ray-multiplex").route(s, request(KEY), np.random.default_rng(0)) == 2
    whole = ROUTING.create("ray-multiplex", match="pipeline")  # nobody holds base 0 + LoRA 2: fewest models
    assert {whole.route(s, request(KEY), np.random.default_rng(i)) for i in range(30)} == {0}


def test_random_is_uniform():
    s = snap(replicas(4, COMP.n, held={0: [0, 2]}))
    picks = Counter(ROUTING.create("random").route(s, request(KEY), np.random.default_rng(i)) for i in range(400))
    assert min(picks.values()) > 60


def test_routing_is_cheap_enough_for_the_simulator():
    """Smoke bound, not a benchmark: 300 replicas x 5000 components well under 100 us a route."""
    import time

    rng = np.random.default_rng(0)
    comp = components([BASE] * 100 + [LORA] * 4900)
    rep = replicas(300, comp.n)
    rep.tier[rng.random(rep.tier.shape) < 0.01] = 0
    s = freeze(ClusterSnapshot(0.0, rep, comp))
    req = request(PipelineKey.of(3, (), (200, 4000)))
    router = ROUTING.create("least-expected-latency")
    t = time.perf_counter()
    for _ in range(500):
        router.route(s, req, rng)
    assert (time.perf_counter() - t) / 500 < 1e-4


@pytest.mark.parametrize("wait,slack,budget,expected", [
    (20.0, 0.0, 0.0, 1),   # latency first: the idle replica (4.6 s of LoRA to load) beats 20 s of queue
    (20.0, 16.0, 0.0, 0),  # 20 s is within 16 s of the best (4.6 s): no load, wait instead
    (20.0, 15.0, 0.0, 1),  # 20 > 4.6 + 15
    (20.0, 0.0, 20.0, 0),  # the holder's 20 s fits a 20 s budget
    (20.0, 0.0, 19.0, 1),
])
def test_slack_and_budget_trade_latency_for_fewer_loads(wait, slack, budget, expected):
    """Replica 0 holds the whole pipeline behind a queue; replica 1 is idle and holds the base."""
    s = snap(replicas(3, COMP.n, held={0: [0, 2], 1: [0]}, busy_s=[NOW + wait, 0.0, 0.0]))
    router = ROUTING.create("least-expected-latency", slack_s=slack, budget_s=budget)
    assert router.route(s, request(KEY), np.random.default_rng(0)) == expected


def test_budget_prefers_the_least_to_load_then_the_shortest_wait():
    # all within a 60 s budget: replica 2 holds everything but waits longest, replica 1 holds
    # the base only, replica 0 nothing; among equal loads the shorter queue wins
    s = snap(replicas(4, COMP.n, held={1: [0], 2: [0, 2], 3: [0, 2]},
                      busy_s=[0.0, 0.0, NOW + 30.0, NOW + 10.0]))
    router = ROUTING.create("least-expected-latency", budget_s=60.0)
    assert router.route(s, request(KEY), np.random.default_rng(0)) == 3


@pytest.mark.parametrize("args", [{"slack_s": -1.0}, {"budget_s": float("nan")}])
def test_negative_slack_or_budget_is_refused(args):
    with pytest.raises(ValueError, match=next(iter(args))):
        ROUTING.create("least-expected-latency", **args)
