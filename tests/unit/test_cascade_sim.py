"""The cascade simulator on a small synthetic DiffServe-shaped cascade and a fixture data folder:
conservation, the one-model baselines, stage switches, the overload rule, no look-ahead, FID
interpolation, and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policies.cascade_allocation import StageProfile
from trace_replay.simulator.cascade import DROPPED, HEAVY, LIGHT, simulate_cascade
from trace_replay.simulator.cascade_control import Controller, Plan, make_controller
from trace_replay.simulator.cascade_inputs import DiffServeCascade, fid_estimate, load_diffserve_cascade
from trace_replay.simulator.cli import main as simulate_main

N_PROMPTS = 200


def small_cascade() -> DiffServeCascade:
    """DiffServe's ampere latencies for a few batch sizes, 5 s SLO, confidences 0..1 evenly."""
    conf = np.full(N_PROMPTS + 1, np.nan)
    conf[1:] = np.linspace(0.0, 1.0, N_PROMPTS)
    light = StageProfile(np.array([1, 2, 4, 8]), np.array([0.10, 0.15, 0.22, 0.41]))
    heavy = StageProfile(np.array([1, 2, 4]), np.array([1.78, 2.16, 3.68]))
    t = np.linspace(0.0, 1.0, 6)
    return DiffServeCascade(5.0, light, heavy, t, np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]), conf)


def poisson(rate_of_t, horizon: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times (thinning) for a rate function, and prompt indices 1..N_PROMPTS."""
    rng = np.random.default_rng(seed)
    peak = max(rate_of_t(x) for x in np.linspace(0, horizon, 200))
    t = np.cumsum(rng.exponential(1.0 / peak, int(peak * horizon * 1.5)))
    t = t[t < horizon]
    t = t[rng.random(t.size) < np.array([rate_of_t(x) for x in t]) / peak]
    return t, rng.integers(1, N_PROMPTS + 1, t.size)


def bursty(x: float) -> float:
    return 12.0 if 20 <= x < 40 else 3.0


@pytest.mark.parametrize("policy", ["all-light", "all-heavy", "static", "diffserve", "coordinator"])
def test_every_query_answered_once_or_dropped(policy):
    c = small_cascade()
    arr, prompts = poisson(bursty, 60.0)
    run = simulate_cascade(arr, prompts, c, 6, make_controller(policy, c, 6))
    s = run.summary()
    assert set(np.unique(run.answered_by)) <= {LIGHT, HEAVY, DROPPED}
    answered = run.answered_by != DROPPED
    assert np.all(np.isfinite(run.finish[answered])) and np.all(np.isnan(run.finish[~answered]))
    assert np.all(run.finish[answered] >= run.arrival[answered])
    assert s["requests"] == arr.size == s["completed"] + s["dropped"]
    assert s["slo_violations"] == s["dropped"] + s["late"]
    assert s["dropped"] == s["dropped_light_queue"] + s["dropped_heavy_queue"]


def test_one_model_baselines_have_the_obvious_heavy_share():
    c = small_cascade()
    arr, prompts = poisson(lambda x: 2.0, 30.0)
    light = simulate_cascade(arr, prompts, c, 4, make_controller("all-light", c, 4)).summary()
    heavy = simulate_cascade(arr, prompts, c, 4, make_controller("all-heavy", c, 4)).summary()
    assert light["heavy_share"] == 0.0 and light["fid_estimate"] == pytest.approx(22.77)
    assert heavy["heavy_share"] == 1.0 and heavy["fid_estimate"] == pytest.approx(18.55)
    assert light["slo_violations"] == 0 and light["latency_p99_s"] <= 0.41 + 1e-9


def test_fid_interpolation_hits_the_published_points():
    assert fid_estimate(0.0) == pytest.approx(18.55)
    assert fid_estimate(0.4) == pytest.approx(16.79)
    assert fid_estimate(1.0) == pytest.approx(22.77)
    assert fid_estimate(0.2) == pytest.approx((18.55 + 16.79) / 2)
    assert fid_estimate(0.7) == pytest.approx((16.79 + 22.77) / 2)
    with pytest.raises(ValueError, match="light share"):
        fid_estimate(1.5)


def test_confidence_cutoff_defers_the_fraction_f():
    c = small_cascade()
    for f in (0.2, 0.5, 0.8):
        assert np.mean(c.confidence[1:] < c.confidence_cutoff(f)) == pytest.approx(f, abs=1 / N_PROMPTS)
    assert c.confidence_cutoff(0.0) == -np.inf and c.confidence_cutoff(1.0) == np.inf
    with pytest.raises(ValueError, match="prompt index 999"):
        c.prompt_confidence(np.array([1, 999]))


class Scripted(Controller):
    """A plan per tick time: {t: Plan}."""

    def __init__(self, first: Plan, later: dict[float, Plan]) -> None:
        super().__init__("scripted", first)
        self.tick_s, self.later = 1.0, later

    def control(self, now_s, arrivals, queued, answered=(0, 0)):
        return self.later.get(round(now_s, 6))


def test_a_stage_switch_costs_its_load_time():
    c = small_cascade()
    split = Plan(1, 1, 1, 1, 0.0, -np.inf)
    all_light = Plan(2, 0, 1, 0, 0.0, -np.inf)
    arr, prompts = np.array([1.5, 1.5]), np.array([N_PROMPTS, N_PROMPTS])  # confident: never deferred
    fast = simulate_cascade(arr, prompts, c, 2, Scripted(split, {1.0: all_light}), switch_s=0.05)
    slow = simulate_cascade(arr, prompts, c, 2, Scripted(split, {1.0: all_light}), switch_s=10.0)
    assert fast.summary()["stage_switches"] == 1 and fast.summary()["load_seconds"] == pytest.approx(0.05)
    assert sorted(fast.finish) == pytest.approx([1.6, 1.6])  # the switched replica took the second query
    assert sorted(slow.finish) == pytest.approx([1.6, 1.7])  # still loading: the second waits a batch


def test_overload_rule_answers_light_instead_of_violating():
    c = small_cascade()
    arr, prompts = poisson(lambda x: 8.0, 30.0, seed=3)
    plan = Plan(1, 1, 4, 2, 0.5, c.confidence_cutoff(0.8))
    plain = simulate_cascade(arr, prompts, c, 2, Controller("plain", plan)).summary()
    ruled = simulate_cascade(arr, prompts, c, 2, Controller("ruled", Plan(**{**plan.__dict__, "overload_rule": True})))
    ruled = ruled.summary()
    assert plain["slo_violation_rate"] > 0.3  # one heavy GPU cannot take 80% of 8 qps
    assert ruled["slo_violations"] == 0 and ruled["overload_light_answers"] > 0
    assert 0 < ruled["heavy_share"] < 0.5


def test_coordinator_decisions_ignore_later_arrivals():
    """Two traces equal up to t=30 s: the plans in force until then and the outcome of every query
    finished by then are the same, whatever arrives after."""
    c = small_cascade()
    arr, prompts = poisson(bursty, 60.0, seed=1)
    keep = arr < 30.0
    calm_tail = np.concatenate([arr[keep], 30.0 + np.arange(10) * 3.0])
    busy_tail = np.concatenate([arr[keep], 30.0 + np.arange(600) * 0.05])
    p_calm = np.concatenate([prompts[keep], np.ones(10, int)])
    p_busy = np.concatenate([prompts[keep], np.ones(600, int)])
    a = simulate_cascade(calm_tail, p_calm, c, 6, make_controller("coordinator", c, 6))
    b = simulate_cascade(busy_tail, p_busy, c, 6, make_controller("coordinator", c, 6))
    assert [x for x in a.timeline if x[0] <= 30.0] == [x for x in b.timeline if x[0] <= 30.0]
    assert [x for x in a.timeline if x[0] > 30.0] != [x for x in b.timeline if x[0] > 30.0]
    n = int(keep.sum())
    done_a = a.finish[:n] <= 30.0
    assert np.array_equal(a.answered_by[:n][done_a], b.answered_by[:n][done_a])
    assert np.array_equal(a.finish[:n][done_a], b.finish[:n][done_a])


def write_fixture(root: Path) -> Path:
    """A DiffServe data folder in the real schemas, small."""
    app = root / "traces/apps/sdturbo_sdv15"
    app.mkdir(parents=True)
    (app / "sdturbo_sdv15.json").write_text(json.dumps({
        "appName": "sdturbo_sdv15", "latencySLOInMSec": 5000,
        "root": {"task": "sdturbo", "model_variants": ["sdturbo"], "children": [
            {"task": "sdv15", "model_variants": ["sdv15"], "children": [
                {"task": "sink", "model_variants": ["sink"], "children": []}]}]}}))
    (app / "f_t_sdturbo_sdv15.csv").write_text(",t,f_t\n0,0.0,0.0\n1,0.5,0.5\n2,1.0,1.0\n")
    prof = root / "profiling"
    prof.mkdir()
    rows = [",Model,Accel,batchsize,avg_runtime,50th_pct,90th_pct,95th_pct"]
    for i, (m, b, ms) in enumerate([("sdturbo", 1, 100), ("sdturbo", 4, 220), ("sdv15", 1, 1780), ("sdv15", 2, 2160)]):
        rows.append(f"{i},{m},onnxruntime_gpu_ampere,{b},{ms},{ms},{ms},{ms}")
    (prof / "stable_diffusion_runtimes_sdturbo.csv").write_text("\n".join(rows) + "\n")
    conf = root / "traces/maf/sdturbo_sdv15/confidence_scores"
    conf.mkdir(parents=True)
    lines = ["content_id,sdturbo,sdv15"] + [f"{i},{i / 20:.3f},0.5" for i in range(1, 21)]
    (conf / "confidence_scores.csv").write_text("\n".join(lines) + "\n")
    trace = root / "arrivals.txt"
    trace.write_text("".join(f"{int(t * 1000)},{1 + i % 20}\n" for i, t in enumerate(np.arange(0, 20, 0.25))))
    return trace


def test_cli_prints_the_simulation_json_with_cascade_keys(tmp_path, capsys):
    trace = write_fixture(tmp_path)
    rc = simulate_main(["--format", "diffserve", "--policies", "static,coordinator", "--trace", str(trace),
                        "--diffserve-dir", str(tmp_path), "--gpus", "4", "--json"])
    assert rc == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["policy_set"] for r in runs] == ["static", "coordinator"]
    for r in runs:
        assert r["requests"] == 80 and 0 <= r["heavy_share"] <= 1
        assert r["fid_estimate"] == pytest.approx(fid_estimate(1 - r["heavy_share"]))
        assert {"slo_violation_rate", "latency_p50_s", "latency_p99_s", "gpus"} <= r.keys()
    assert load_diffserve_cascade(tmp_path).slo_s == 5.0


@pytest.mark.parametrize("extra, message", [
    (["--format", "katz", "--policies", "static"], "need --format diffserve"),
    (["--format", "diffserve", "--policies", "static,ray-default"], "cannot run beside cluster policy sets"),
    (["--format", "diffserve", "--policies", "static", "--gpus", "0"], "--gpus must be >= 1"),
    (["--format", "diffserve", "--policies", "static", "--records", "x.csv"], "--records not supported"),
    (["--format", "diffserve", "--policies", "static", "--switch-s", "-1"], "--switch-s must be >= 0"),
    (["--format", "diffserve", "--policies", "static", "--diffserve-dir", "/nonexistent"], "folder not found"),
    (["--format", "diffserve", "--policies", "static", "--trace", "/nonexistent.txt"], "no such file"),
])
def test_cli_bad_input_names_what_is_wrong(tmp_path, capsys, extra, message):
    trace = write_fixture(tmp_path)
    argv = ["--trace", str(trace), "--diffserve-dir", str(tmp_path), "--gpus", "4"] + extra
    assert simulate_main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_names_a_prompt_without_confidence(tmp_path, capsys):
    write_fixture(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("0,1\n100,77\n")
    assert simulate_main(["--format", "diffserve", "--policies", "static", "--trace", str(bad),
                          "--diffserve-dir", str(tmp_path), "--gpus", "2"]) == 2
    assert "prompt index 77" in capsys.readouterr().err


def test_tie_break_tick_before_an_arrival_at_the_same_instant():
    """Documented order at one instant: completions, timers, the tick, then arrivals; so a query
    arriving exactly at a tick is counted by the next tick, and every arrival is counted once."""
    seen: list[tuple[float, int]] = []

    class Recording(Controller):
        tick_s = 1.0

        def control(self, now_s, arrivals, queued, answered=(0, 0)):
            seen.append((now_s, arrivals))
            return None

    c = small_cascade()
    simulate_cascade(np.array([0.5, 1.0, 1.0, 2.5]), np.array([N_PROMPTS] * 4), c, 2,
                     Recording("rec", Plan(2, 0, 1, 0, 0.0, -np.inf)))
    assert seen[:3] == [(1.0, 1), (2.0, 2), (3.0, 1)]
