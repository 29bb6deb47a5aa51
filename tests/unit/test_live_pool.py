"""benchmarks/live_pool.py: kept live_coordinator runs of several draws, compared draw by draw and
pooled."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.live_pool import draw_of, main, runs_of
from trace_replay.replay.compare import compare, read_records
from trace_replay.replay.driver import Record
from trace_replay.replay.report import write_records

SLO = 1.0


def parity_run(folder, latencies, loads, seed: int, slo: float = SLO):
    """What `t2i parity --out` leaves that live_pool reads: records.csv and parity.json."""
    recs = [Record(index=i, scheduled_s=float(i), base_model="m0", n_loras=0, n_controlnets=0, steps=2,
                   sent_s=float(i), done_s=float(i) + lat, outcome="completed", http_status=200,
                   timings={"load_s": load}) for i, (lat, load) in enumerate(zip(latencies, loads))]
    write_records(folder / "records.csv", recs)
    (folder / "parity.json").write_text(json.dumps({"slice": {"seed": seed, "rate": 1.5, "max_requests": len(recs)},
                                                    "live_summary": {"slo_s": slo}}))


def kept_run(tmp_path, name: str, seed: int, late_share: float, repeats: int = 2, slo: float = SLO):
    """A work folder with `repeats` pairs: ray-default never late, coordinator late in `late_share`
    of its requests, with half the load-seconds."""
    rng = np.random.default_rng(seed)
    work = tmp_path / name
    for r in range(repeats):
        n = 200
        base = rng.uniform(0.2, 0.8, n)
        late = base + (rng.random(n) < late_share) * 1.0
        tag = "" if repeats == 1 else f"-{r + 1}"
        parity_run(work / f"parity-ray-default{tag}", base, np.full(n, 1.0), seed, slo)
        parity_run(work / f"parity-coordinator{tag}", late, np.full(n, 0.5), seed, slo)
    # another arm whose name starts with the coordinator's: not one of its repeats
    parity_run(work / "parity-coordinator-blind-1", base, np.full(n, 0.5), seed, slo)
    return work


def test_runs_are_found_by_repeat_and_other_arms_are_not_taken(tmp_path):
    work = kept_run(tmp_path, "w", seed=1, late_share=0.1)
    assert sorted(runs_of(work, "coordinator")) == ["1", "2"]
    assert sorted(runs_of(work, "coordinator-blind")) == ["1"]
    single = kept_run(tmp_path, "s", seed=2, late_share=0.1, repeats=1)
    assert list(runs_of(single, "ray-default")) == [""]


def test_each_draw_and_the_pool_are_the_paired_comparisons(tmp_path):
    w1 = kept_run(tmp_path, "w1", seed=1, late_share=0.1)
    w2 = kept_run(tmp_path, "w2", seed=2, late_share=0.3)
    out = tmp_path / "pool.json"
    assert main([str(w1), str(w2), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [d["seed"] for d in doc["draws"]] == [1, 2]
    by_draw = [d["comparison"]["violation_points"][0] for d in doc["draws"]]
    assert 5 < by_draw[0] < 15 and 20 < by_draw[1] < 40  # B late in ~10% and ~30% of requests
    pairs = draw_of(w1, "ray-default", "coordinator")["pairs"] + draw_of(w2, "ray-default", "coordinator")["pairs"]
    assert doc["pooled"]["violation_points"] == pytest.approx(compare(pairs, SLO)["violation_points"])
    assert doc["pooled"]["pairs"] == 4 and doc["pooled"]["requests"] == 800
    assert doc["pooled"]["ratio"]["load_seconds"][0] == pytest.approx(0.5)
    assert min(by_draw) < doc["pooled"]["violation_points"][0] < max(by_draw)
    n, va, vb = doc["violations_by_base_model"]["m0"]
    assert n == 800 and va == 0
    assert vb == pytest.approx(doc["pooled"]["b"]["slo_violation_rate"] * 800)


def test_a_folder_without_both_arms_or_mixed_slos_is_refused(tmp_path, capsys):
    w1 = kept_run(tmp_path, "w1", seed=1, late_share=0.1)
    assert main([str(w1), "--arm", "coordinator-lean", "--out", str(tmp_path / "x.json")]) == 2
    assert "no repeat holds both parity-ray-default and parity-coordinator-lean" in capsys.readouterr().err
    w2 = kept_run(tmp_path, "w2", seed=2, late_share=0.1, slo=2.0)
    assert main([str(w1), str(w2), "--out", str(tmp_path / "y.json")]) == 2
    assert "different SLOs" in capsys.readouterr().err
    assert not (tmp_path / "y.json").exists()
    assert read_records(w1 / "parity-coordinator-1").index.size == 200  # nothing touched
