"""Whole runs of every policy set: conservation, determinism by seed, the JSON command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trace_replay.formats import load_trace
from trace_replay.simulator import POLICY_SETS, SimConfig, simulate
from trace_replay.simulator.config import ClusterSpec
from trace_replay.simulator.workload import build_workload
from trace_replay.synth import SynthConfig, write_katz_json

from tests.trace_fixtures import FIX as FIXTURES  # noqa: E402


@pytest.fixture(scope="module")
def synth_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "synth.json"
    # 4000 requests in ~1.2 h on 6 GPUs: busy enough to queue, evict and autoscale
    write_katz_json(SynthConfig(requests=4000, instances=6, seed=3, days=0.05, base_models=40,
                                loras=200, controlnets=12), out)
    return load_trace(out, "katz")


def cfg(seed: int = 0, gpus: int = 6) -> SimConfig:
    return SimConfig(cluster=ClusterSpec(gpus=gpus, gpu_model_gb=12.0), seed=seed, slo_s=30.0)


@pytest.mark.parametrize("name", sorted(POLICY_SETS))
def test_every_request_completes_once_and_gpu_time_is_conserved(synth_table, name):
    res = simulate(synth_table, name, cfg())
    rec, wl = res.records, res.workload
    assert rec.completions.tolist() == [1] * len(wl)
    assert np.all(rec.start >= wl.arrival) and np.all(rec.finish >= rec.start)
    # a job occupies its worker from start to finish: load + compute, nothing else
    np.testing.assert_allclose(rec.finish - rec.start, rec.load_s + wl.infer_s, rtol=1e-9, atol=1e-9)
    # busy (accumulated per job) + idle (accumulated from the gaps between jobs) = N x makespan
    n = cfg().cluster.gpus
    assert rec.busy_s.sum() + rec.idle_s.sum() == pytest.approx(n * rec.makespan, rel=1e-9)
    # and the busy time is exactly the requests' jobs plus the prefetch jobs
    assert rec.busy_s.sum() == pytest.approx((rec.finish - rec.start).sum() + rec.prefetch_s, rel=1e-9)
    # the makespan ends with the last job: a request, or a prefetch that outlasts them
    last = max(rec.finish.max(), wl.arrival.max())
    if rec.prefetch_s == 0:
        assert rec.makespan == pytest.approx(last)
    else:
        assert last <= rec.makespan <= last + rec.prefetch_s
    # jobs on one worker never overlap
    for w in np.unique(rec.worker):
        sel = np.flatnonzero(rec.worker == w)
        order = sel[np.argsort(rec.start[sel], kind="stable")]
        assert np.all(rec.start[order][1:] >= rec.finish[order][:-1] - 1e-9)
    s = res.summary
    if POLICY_SETS[name].autoscaling == "none":
        assert s["gpu_active_seconds"] == pytest.approx(n * rec.makespan)
    else:
        assert 0 < s["gpu_active_seconds"] <= n * rec.makespan + 1e-6
    # (the two sums add the same demand loads in different orders: allow rounding)
    assert s["loads"] >= s["requests_with_miss"] and s["load_seconds"] >= s["demand_load_seconds"] * (1 - 1e-12) > 0


def test_same_seed_same_run_and_another_seed_differs(synth_table):
    a = simulate(synth_table, "coordinator", cfg(seed=7))
    b = simulate(synth_table, "coordinator", cfg(seed=7))
    c = simulate(synth_table, "coordinator", cfg(seed=8))
    for f in ("start", "finish", "load_s", "worker"):
        np.testing.assert_array_equal(getattr(a.records, f), getattr(b.records, f))
    assert not np.array_equal(a.records.finish, c.records.finish)
    drop = ("sim_wall_s", "sim_requests_per_s")
    assert {k: v for k, v in a.summary.items() if k not in drop} == {k: v for k, v in b.summary.items() if k not in drop}


def test_sets_compared_on_one_workload_see_identical_samples(synth_table):
    wl, _ = build_workload(synth_table, cfg())
    r1 = simulate(synth_table, "lru", cfg(), workload=wl)
    r2 = simulate(synth_table, "lfu", cfg(), workload=wl)
    assert r1.workload is r2.workload
    assert r1.summary["compute_seconds"] == pytest.approx(r2.summary["compute_seconds"])


def test_gentd26_load_samples_are_used_when_the_data_is_there(synth_table):
    from trace_replay.paths import gentd26_dir

    if not (gentd26_dir() / "basemodel_update_latency_anon.csv").exists():
        pytest.skip("../shared/data/gentd26 is absent")
    wl, notes = build_workload(synth_table, cfg(), gentd26_dir())
    assert "remote load times: gentd26" in notes
    assert 15.0 < wl.mean_load_s[2] < 30.0  # base-model refresh: the talk's 22.6 s


def test_cli_prints_one_json_object_with_the_required_keys(capsys, tmp_path):
    from app.cli import main

    rc = main(["simulate", "--trace", str(FIXTURES / "katz_small.json"), "--format", "katz", "--policies",
               "ray-default", "--gpus", "2", "--slo-s", "30", "--json", "--data-dir", "none",
               "--records", str(tmp_path / "rec.csv"), "--figures", str(tmp_path / "fig")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("requests", "slo_violation_rate", "latency_p50_s", "latency_p99_s", "load_seconds",
                "gpu_busy_seconds", "gpu_idle_seconds", "queue_len_mean"):
        assert key in out, key
    assert out["requests"] == len(load_trace(FIXTURES / "katz_small.json", "katz"))
    assert 0.0 <= out["slo_violation_rate"] <= 1.0 and out["latency_p99_s"] >= out["latency_p50_s"] > 0
    lines = (tmp_path / "rec.csv").read_text().splitlines()
    assert len(lines) == out["requests"] + 1 and lines[0].startswith('"request"')
    assert all(Path(p).exists() for p in out["figures"])


def test_cli_names_an_unknown_policy_set(capsys):
    from app.cli import main

    rc = main(["simulate", "--trace", str(FIXTURES / "katz_small.json"), "--format", "katz",
               "--policies", "nope", "--json"])
    assert rc == 2 and "unknown policy set 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["coordinator", "coordinator-autoscaled"])
def test_policy_router_keeps_its_snapshot_equal_to_one_built_from_the_workers(synth_table, name):
    # the in-place tier matrix and replica arrays must track every load, eviction and tier spill
    from policies.snapshot import DISK, GPU, HOST, REMOTE
    from trace_replay.simulator.engine import Simulation
    from trace_replay.simulator.policy_routing import PolicyRouter
    from trace_replay.simulator.policy_sets import build_runtime

    c = cfg().model_copy(update={"cluster": ClusterSpec(gpus=6, gpu_model_gb=12.0, host_gb=16.0, disk_gb=40.0)})
    trace = synth_table
    if name == "coordinator-autoscaled":  # a burst, then a trickle long enough to scale back down
        rows = np.concatenate([np.arange(120), np.arange(120, len(synth_table), 20)])
        trace = synth_table.take(rows)
        trace.time[:] = np.concatenate([np.linspace(0, 60, 120), 60 + 60.0 * np.arange(1, rows.size - 119)])
    wl, _ = build_workload(trace, c)
    sim = Simulation(wl, c, build_runtime(name, c))
    rec = sim.run()
    router = sim.rt.router
    assert isinstance(router, PolicyRouter) and rec.completions.min() == 1
    if name == "coordinator-autoscaled":  # the stopped-GPU path ran: it scaled up and back down
        counts = [a for _, a in rec.active_series]
        assert max(counts) > counts[-1] >= 1
    expect = np.full_like(router.tier, REMOTE)
    for w in sim.workers:
        expect[w.idx, list(w.disk.items)] = DISK
        expect[w.idx, list(w.host.items)] = HOST
        expect[w.idx, list(w.slot_of)] = GPU
    assert (expect == GPU).sum() > 0 and (expect == DISK).sum() > 0
    np.testing.assert_array_equal(router.tier, expect)
    # everything finished; a stopped GPU shows an endless queue so no router picks it
    assert [int(q) for q, w in zip(router.q, sim.workers) if w.routable] == [0] * sum(w.routable for w in sim.workers)
    assert all(router.busy_until[w.idx] == np.inf for w in sim.workers if not w.routable)
    assert router.gpu_free.tolist() == [int(w.free_bytes) for w in sim.workers]
    assert router.n_models.tolist() == [w.n_base for w in sim.workers]


def test_skipping_steady_autoscaler_ticks_changes_nothing(synth_table):
    # ticks whose inputs equal a settled decision are skipped for speed; the run must not notice
    from trace_replay.simulator.engine import Simulation
    from trace_replay.simulator.policy_sets import build_runtime

    c = cfg()
    wl, _ = build_workload(synth_table, c)
    runs = []
    for skip in (True, False):
        rt = build_runtime("ray-default", c)
        sim = Simulation(wl, c, rt)
        rt.autoscaler.pure = skip
        runs.append(sim.run())
    np.testing.assert_array_equal(runs[0].finish, runs[1].finish)
    assert runs[0].active_series == runs[1].active_series and len(runs[0].active_series) > 2


def test_cli_compares_several_sets_and_reads_a_config_file(capsys, tmp_path):
    from app.cli import main

    conf = tmp_path / "sim.json"
    conf.write_text(json.dumps({"cluster": {"load_model": "bandwidth", "remote_gbps": 0.5},
                                "inference": {"jitter_cv": 0.0}}))
    rc = main(["simulate", "--trace", str(FIXTURES / "katz_small.json"), "--format", "katz", "--policies",
               "lru,coordinator", "--gpus", "3", "--config", str(conf), "--json", "--data-dir", "none"])
    assert rc == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["policy_set"] for r in runs] == ["lru", "coordinator"] and all(r["gpus"] == 3 for r in runs)
    assert runs[0]["compute_seconds"] == runs[1]["compute_seconds"]  # one sampled workload for both
    # remote loads at 0.5 GB/s: every cold base-model load takes 1.15 s + size / 0.5 GB/s, 5.15-15.15 s
    # (host reloads are faster, 1.3-1.7 s)
    assert runs[0]["loads_by_kind"]["base_model"] >= 1
    per_load = runs[0]["load_seconds_by_kind"]["base_model"] / runs[0]["loads_by_kind"]["base_model"]
    assert 1.3 <= per_load <= 15.15
