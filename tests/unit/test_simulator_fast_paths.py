"""The simulator's fast paths decide exactly as the forms the live service runs: the routing index
(LeastExpectedLatency.route_indexed) against the snapshot route, and cost-aware's one-cache
eviction order against priority() + lexsort. Whole coordinator runs must match record for record."""

from __future__ import annotations

import numpy as np
import pytest

from policies.snapshot import GPU, REMOTE
from trace_replay.formats import load_trace
from trace_replay.simulator.config import ClusterSpec, SimConfig
from trace_replay.simulator.engine import Simulation
from trace_replay.simulator.policy_sets import build_runtime, get_policy_set
from trace_replay.simulator.workload import build_workload
from trace_replay.synth import SynthConfig, write_katz_json


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast") / "synth.json"
    # busy enough to queue, evict (GPU, host and disk tiers) and re-plan many times
    write_katz_json(SynthConfig(requests=4000, instances=6, seed=5, days=0.05, base_models=40,
                                loras=200, controlnets=12), out)
    c = SimConfig(cluster=ClusterSpec(gpus=6, gpu_model_gb=12.0, host_gb=16.0, disk_gb=40.0), seed=1, slo_s=30.0)
    return build_workload(load_trace(out, "katz"), c)[0], c


class _VectorisedOnly:
    """The eviction policy without its one-cache form: the simulator then ranks through priority()."""

    def __init__(self, policy) -> None:
        self._p = policy
        self.name, self.needs_future, self.independent_caches = policy.name, policy.needs_future, False

    def priority(self, view):
        return self._p.priority(view)


def _run(wl, c, name: str, fast: bool):
    spec = get_policy_set(name)
    if not fast:
        spec = spec.model_copy(update={"routing_args": {**spec.routing_args, "indexed": False}})
    rt = build_runtime(spec, c)
    if not fast and hasattr(rt.eviction, "eviction_order"):  # a stateful policy has one path: its memory
        rt.eviction = _VectorisedOnly(rt.eviction)
    sim = Simulation(wl, c, rt)
    return sim, sim.run()


@pytest.mark.parametrize("name", ["coordinator", "coordinator-lean", "coordinator-autoscaled"])
def test_fast_paths_change_no_decision(workload, name):
    wl, c = workload
    sim_fast, fast = _run(wl, c, name, True)
    sim_slow, slow = _run(wl, c, name, False)
    assert (sim_fast.rt.router.index is not None) == (name == "coordinator" or name == "coordinator-autoscaled")
    assert sim_slow.rt.router.index is None
    assert fast.loads_by_kind == slow.loads_by_kind and fast.loads_by_kind[2] > 0
    for f in ("start", "finish", "load_s", "worker", "misses"):
        np.testing.assert_array_equal(getattr(fast, f), getattr(slow, f), err_msg=f)
    assert fast.prefetch_loads == slow.prefetch_loads


def test_routing_index_mirrors_the_tier_matrix(workload):
    wl, c = workload
    sim, _ = _run(wl, c, "coordinator", True)
    router = sim.rt.router
    ix, tier = router.index, router.tier
    cost = router.table.load_cost_s
    np.testing.assert_array_equal(ix.load_s, np.take_along_axis(cost, tier.T.astype(np.int64), axis=1))
    assert [sorted(s) for s in ix.gpu] == [np.flatnonzero(tier[:, k] == GPU).tolist() for k in range(tier.shape[1])]
    assert (tier != REMOTE).any()
    assert ix.idle == {w.idx for w in sim.workers if w.routable and not w.busy}


def test_queue_wait_skips_the_clamp_only_when_no_seconds_are_negative():
    from trace_replay.simulator.policy_routing import PolicyRouter

    router = PolicyRouter(band_pools=False)
    gen = np.random.default_rng(0)
    for negative in (False, True):
        n = 50
        router.run_floor = gen.random(n) * (gen.random(n) < 0.5)
        router.run_end = np.where(gen.random(n) < 0.5, 100.0 + gen.random(n) * 9, 0.0)
        router.run_end[3] = np.inf
        router.queued = gen.random(n) * 4 * (gen.random(n) < 0.5)
        if negative:
            router.queued[7] = -1e-12  # rounding left behind by a dequeue: the clamp must run
            router.run_floor[7] = router.run_end[7] = 0.0
        router._negative = set(np.flatnonzero((router.run_floor < 0) | (router.queued < 0)).tolist())
        router._bu, router._wait, router._now = np.zeros(n), np.zeros(n), 101.0
        bu = np.maximum(np.add(router.run_floor, 101.0), router.run_end) + router.queued
        np.testing.assert_array_equal(router._queue_wait(), np.maximum(bu, 101.0) - 101.0)
