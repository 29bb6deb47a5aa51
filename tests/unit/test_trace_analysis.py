"""Analyses on small fixtures write figures and compute what they say; real-data checks skip without data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trace_replay.analysis import gentd26 as g26
from trace_replay.analysis import loading, workload
from trace_replay.cli import main
from trace_replay.formats import load_trace
from trace_replay.formats.katz import load_katz
from trace_replay.paths import gentd26_dir, diffserve_dir
from trace_replay.synth import SynthConfig, write_katz_json
from trace_replay.table import CONTROLNET, LORA

from tests.trace_fixtures import FIX  # noqa: E402
needs_gentd26 = pytest.mark.skipif(not (gentd26_dir() / "data_trace_processed.csv").exists(),
                                   reason=f"GenTD26 data not found at {gentd26_dir()} (set T2I_SHARED_DATA)")
needs_diffserve = pytest.mark.skipif(not diffserve_dir().exists(),
                                     reason=f"DiffServe data not found at {diffserve_dir()} (set T2I_SHARED_DATA)")


@pytest.fixture(scope="module")
def synth_trace(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "t.json"
    write_katz_json(SynthConfig(requests=5000, instances=6, seed=2, base_models=80, days=2.0), out)
    return out


def _figures_exist(paths: list[str]) -> None:
    assert {Path(p).suffix for p in paths} == {".png", ".pdf"}
    assert all(Path(p).stat().st_size > 1000 for p in paths)


def test_service_stats_and_invocation(tmp_path):
    t = load_katz(FIX / "katz_small.json")
    rows, paths = workload.service_stats(t, tmp_path)
    _figures_exist(paths)
    by = {r["service"]: r for r in rows}
    assert by["A"]["requests"] == 4 and by["B"]["requests"] == 2 and by["all"]["instances"] == 3
    assert by["A"]["with_cn"] == pytest.approx(0.75) and by["B"]["null_base"] == 1
    rows, paths = workload.invocation(t, CONTROLNET, tmp_path)
    _figures_exist(paths)
    a = {r["service"]: r for r in rows}["A"]
    assert a["invocations"] == 4 and a["distinct_controlnets"] == 2 and a["top1_share"] == pytest.approx(0.75)
    assert a["max_per_request"] == 2
    rows, _ = workload.invocation(t, LORA, None)
    assert {r["service"]: r["invocations"] for r in rows} == {"A": 3, "B": 2, "all": 5}


def test_unique_loras_counts(tmp_path):
    t = load_katz(FIX / "katz_small.json")
    rows, paths = workload.unique_loras(t, tmp_path, window_s=3.0)
    _figures_exist(paths)
    a = {r["service"]: r for r in rows}["A"]
    # A/10.0.0.1 uses l1 at t=100, then l3 and l1 at t=106: 2 distinct overall
    assert a["max_total"] == 2 and a["instances"] == 1


def test_adapter_loading_figure_and_min_bound(synth_trace, tmp_path):
    t = load_katz(synth_trace)
    rows, paths, misses = loading.adapter_loading(t, ["lru", "lfu", "belady"], [1, 2, 4, 8], workers=1,
                                                  out_dir=tmp_path)
    _figures_exist(paths)
    assert np.all(misses["belady"] <= misses["lru"]) and np.all(misses["belady"].sum(0) <= misses["lfu"].sum(0))
    assert {r["service"] for r in rows} == {"A", "B"} and len(rows) == 2 * 3 * 4


def test_cli_commands_write_figures(synth_trace, tmp_path, capsys):
    for cmd in ("stats", "controlnet", "lora", "unique-loras"):
        assert main(["--no-progress", cmd, "--trace", str(synth_trace), "--format", "katz",
                     "--out-dir", str(tmp_path), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["rows"] and len(out["figures"]) == 2
    assert main(["--no-progress", "adapter-loading", "--trace", str(synth_trace), "--format", "katz",
                 "--capacities", "1-3", "--workers", "1", "--service", "B", "--out-dir", str(tmp_path)]) == 0
    assert "Belady" not in capsys.readouterr().err


def test_cli_lenient_reports_skips(capsys):
    assert main(["--no-progress", "load", "--trace", str(FIX / "katz_bad.json"), "--format", "katz"]) == 2
    assert "katz_bad.json:3" in capsys.readouterr().err
    assert main(["--no-progress", "load", "--trace", str(FIX / "katz_bad.json"), "--format", "katz",
                 "--lenient", "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["skipped_rows"] == 2 and "skipped 2 malformed row(s)" in cap.err


def test_cli_synth_then_load(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["--no-progress", "synth", "--requests", "3000", "--instances", "5", "--seed", "4",
                 "--base-models", "60", "--out", str(out)]) == 0
    assert main(["--no-progress", "load", "--trace", str(out), "--format", "katz", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the synth line
    assert info["requests"] == 3000 and info["instances"] == 5
    t = load_katz(out)
    assert len(t) == 3000 and len(t.instances) == 5


def test_gentd26_analyses_on_fixtures(tmp_path):
    t = load_trace(FIX / "data_trace_processed_small.csv", "gentd26-processed")
    rows, paths = g26.skew(t, tmp_path)
    _figures_exist(paths)
    by = {r["component"]: r for r in rows}
    assert by["base_model"]["distinct"] == 2 and by["lora"]["requests"] == 7 and by["lora"]["distinct"] == 3
    rows, paths = g26.load_times(FIX, tmp_path)
    _figures_exist(paths)
    assert {r["component"]: r["samples"] for r in rows} == {"lora": 3, "controlnet": 2}
    rows, paths = g26.qps(FIX, tmp_path)
    _figures_exist(paths)
    gen = {r["request_type"]: r for r in rows}["Generative Requests"]
    assert gen["peak_qps"] == pytest.approx(0.36) and gen["instants"] == 4


@needs_gentd26
def test_real_gentd26_skew_and_loading():
    t = load_trace(gentd26_dir() / "data_trace_processed.csv", "gentd26-processed")
    assert len(t) >= 40_000 and t.skipped.count == 0
    rows, _ = g26.skew(t, None)
    base = {r["component"]: r for r in rows}["base_model"]
    assert 0.8 < base["gini"] < 0.99 and base["top5%_share"] > 0.6  # extreme skew, as published
    res = loading.adapter_loading(t, ["lru", "lfu", "belady"], [1, 4, 16], workers=1)[2]
    assert np.all(res["belady"] <= res["lru"]) and np.all(res["belady"] <= res["lfu"])
    r = load_trace(gentd26_dir() / "lora_request_trace.csv", "gentd26-requests")
    assert len(r) == 26_823 and r.skipped.count == 0 and int(r.n_loras.max()) >= 4


@needs_gentd26
def test_real_gentd26_load_times():
    rows = {r["component"]: r for r in g26.load_times(gentd26_dir(), None)[0]}
    # the published medians: base model ~22.6 s, LoRA ~4.6 s
    assert 15 < rows["base_model"]["p50_s"] < 30 and 2 < rows["lora"]["p50_s"] < 7


@needs_diffserve
def test_real_diffserve_arrivals():
    t = load_trace(diffserve_dir() / "traces/maf/sdturbo_sdv15_dynamic_testbed/trace_1to8qps.txt", "diffserve")
    assert len(t) > 1000 and t.skipped.count == 0 and 300 < t.time.max() < 400  # ~347 s per trace


@needs_diffserve
def test_real_diffserve_overview(tmp_path):
    from trace_replay.analysis.diffserve import overview

    rows, paths = overview(diffserve_dir(), tmp_path)
    _figures_exist(paths)
    fixed = {r["trace"]: r for r in rows}["sdturbo_sdv15_fixed_10qps/sdturbo_sdv15.txt"]
    assert 9 < fixed["mean_qps"] < 12
    assert sorted(r["slo_s"] for r in rows if str(r["trace"]).startswith("app")) == [5.0, 5.0, 15.0]
