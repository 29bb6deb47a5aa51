"""benchmarks/live_coordinator.py's per-base-model breakdown of a parity run's records."""

from __future__ import annotations

import csv

import pytest

from benchmarks.live_coordinator import by_base_model

FIELDS = ["index", "outcome", "base_model", "replica", "latency_s", "queue_s", "inference_s", "load_s",
          "fetch_s", "swap_s", "unmerge_s", "merge_s"]


def test_counts_replicas_violations_and_pipeline_loading(tmp_path):
    rows = [  # (outcome, base, replica, latency, queue, inference, load, fetch)
        ("completed", "light", "r1", 0.5, 0.0, 0.4, 0.30, 0.10),  # 0.2 s of pipeline loading
        ("completed", "light", "r2", 2.5, 1.5, 0.6, 0.05, 0.05),  # over a 2 s SLO
        ("failed", "light", "", 0.1, 0.0, 0.0, 0.0, 0.0),         # a failure is a violation
        ("completed", "heavy", "r1", 1.9, 0.2, 1.6, 0.0, 0.0),
    ]
    path = tmp_path / "records.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for i, (outcome, base, rep, lat, q, inf, load, fetch) in enumerate(rows):
            w.writerow([i, outcome, base, rep, lat, q, inf, load, fetch, 0, 0, 0])
    out = by_base_model(path, slo_s=2.0)
    assert out["light"]["requests"] == 3 and out["light"]["replicas"] == 2
    assert out["light"]["slo_violations"] == 2
    assert out["light"]["models_load_s"] == pytest.approx(0.2)
    assert out["light"]["queue_p50_s"] == pytest.approx(0.75) and out["light"]["inference_p50_s"] == pytest.approx(0.5)
    assert out["heavy"] == {"requests": 1, "replicas": 1, "slo_violations": 0, "models_load_s": 0.0,
                            "queue_p50_s": 0.2, "inference_p50_s": 1.6}
