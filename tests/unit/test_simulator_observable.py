"""Routers, placement and autoscaling decide from what a live system could observe.

A replica can report its queue, how long its running job has run and what that job is expected
to take (the profile's means); it cannot report the job's sampled duration. So changing one job's
sampled duration (its compute jitter, or the remote-load draw it consumed) must not change any
routing decision taken before that job ends: up to then the two runs see the same observations.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trace_replay.formats import load_trace
from trace_replay.simulator.config import ClusterSpec, SimConfig
from trace_replay.simulator.engine import Simulation
from trace_replay.simulator.policy_sets import PolicySetSpec, build_runtime, get_policy_set
from trace_replay.simulator.workload import build_workload
from trace_replay.synth import SynthConfig, write_katz_json

SETS = {
    "coordinator": get_policy_set("coordinator"),
    "coordinator-lean": get_policy_set("coordinator-lean"),
    "coordinator-autoscaled": get_policy_set("coordinator-autoscaled"),
    "cache-aware": PolicySetSpec(name="cache-aware", routing="cache-aware"),
}


class LoggingSimulation(Simulation):
    """Records which remote-load samples each request's job consumed (positions in the pools)."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.consumed: dict[int, list[tuple[int, int]]] = {}

    def start(self, w, i, comps, now) -> None:
        before = dict(self.pool_pos)
        super().start(w, i, comps, now)
        self.consumed[i] = [(kind, p) for kind in before for p in range(before[kind], self.pool_pos[kind])]


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """1500 Katz-shaped requests in ~15 min on 4 GPUs with sampled (exponential) remote loads:
    queues build, so routers weigh replicas' remaining work."""
    out = tmp_path_factory.mktemp("obs") / "synth.json"
    write_katz_json(SynthConfig(requests=1500, instances=4, seed=5, days=0.01, base_models=12,
                                loras=60, controlnets=6), out)
    table = load_trace(out, "katz")
    cfg = SimConfig(cluster=ClusterSpec(gpus=4, gpu_model_gb=12.0), seed=1, slo_s=60.0)
    return table, cfg


def _run(wl, cfg, spec):
    sim = LoggingSimulation(wl, cfg, build_runtime(spec, cfg))
    return sim, sim.run()


@pytest.mark.parametrize("what", ["infer", "load"])
@pytest.mark.parametrize("name", sorted(SETS))
def test_one_jobs_sampled_duration_changes_no_decision_taken_before_it_ends(busy, name, what):
    table, cfg = busy
    spec = SETS[name]
    wl, _ = build_workload(table, cfg)
    sim, a = _run(wl, cfg, spec)
    n = len(wl)
    # a job from the middle of the run that a busy worker ran with a remote load (so both kinds
    # of sample exist), and with later requests arriving while it runs
    j = next(i for i in range(n // 3, n) if sim.consumed.get(i)
             and np.count_nonzero((wl.arrival > a.start[i]) & (wl.arrival < a.finish[i])) >= 5)
    if what == "infer":
        infer = wl.infer_s.copy()
        infer[j] = infer[j] * 4.0 + 20.0
        wl2 = dataclasses.replace(wl, infer_s=infer)
    else:
        pools = {k: v.copy() for k, v in wl.load_pool.items()}
        kind, pos = sim.consumed[j][0]
        pools[kind][pos] = pools[kind][pos] * 4.0 + 20.0
        wl2 = dataclasses.replace(wl, load_pool=pools)
    _, b = _run(wl2, cfg, spec)
    assert b.finish[j] > a.finish[j]  # the change took effect
    end = a.finish[j]  # the earlier of the two ends
    before = wl.arrival < end  # routed on arrival (these routers never hold a request)
    assert before.sum() > j
    np.testing.assert_array_equal(a.worker[before], b.worker[before])
    np.testing.assert_array_equal(a.start[before & (a.start < end)], b.start[before & (a.start < end)])


def test_mean_job_seconds_come_from_completed_jobs_only(busy):
    # the autoscalers' and placement's mean service time: completed jobs' durations, not the
    # sampled durations of requests that arrived but have not run
    table, cfg = busy
    wl, _ = build_workload(table, cfg)
    sim = Simulation(wl, cfg, build_runtime("lru", cfg))
    assert sim.mean_job_s() == pytest.approx(wl.expect_infer_s[0])  # nothing done: the profile
    rec = sim.run()
    assert sim.mean_job_s() == pytest.approx((rec.finish - rec.start).sum() / len(wl))
