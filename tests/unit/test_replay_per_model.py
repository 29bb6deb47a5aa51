"""The replay summary's per-base-model figures (trace_replay.replay.report.per_model)."""

from __future__ import annotations

import pytest

from trace_replay.replay.driver import Record, RunResult
from trace_replay.replay.report import per_model


def _rec(i, outcome, base, replica, latency, queue, inference, load, fetch) -> Record:
    return Record(index=i, scheduled_s=0.0, base_model=base, n_loras=0, n_controlnets=0, steps=2,
                  sent_s=0.0, done_s=latency, outcome=outcome, replica=replica,
                  timings={"queue_s": queue, "inference_s": inference, "load_s": load, "fetch_s": fetch})


def test_counts_replicas_violations_and_pipeline_loading():
    records = [
        _rec(0, "completed", "light", "r1", 0.5, 0.0, 0.4, 0.30, 0.10),  # 0.2 s of pipeline loading
        _rec(1, "completed", "light", "r2", 2.5, 1.5, 0.6, 0.05, 0.05),  # over a 2 s SLO
        _rec(2, "failed", "light", "", 0.1, 0.0, 0.0, 0.0, 0.0),          # a failure is a violation
        _rec(3, "completed", "heavy", "r1", 1.9, 0.2, 1.6, 0.0, 0.0),
    ]
    out = per_model(RunResult(records, 0.0, 3.0, "finished", False), slo_s=2.0)
    assert out["light"]["requests"] == 3 and out["light"]["replicas"] == 2
    assert out["light"]["violations"] == 2
    assert out["light"]["models_load_s"] == pytest.approx(0.2)
    assert out["light"]["queue_p50_s"] == pytest.approx(0.75) and out["light"]["inference_p50_s"] == pytest.approx(0.5)
    heavy = out["heavy"]
    assert (heavy["requests"], heavy["replicas"], heavy["violations"]) == (1, 1, 0)
    assert heavy["models_load_s"] == 0.0
    assert heavy["queue_p50_s"] == pytest.approx(0.2) and heavy["inference_p50_s"] == pytest.approx(1.6)
