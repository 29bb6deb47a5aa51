"""``t2i replay`` against the real service (the suite's shared Ray Serve instance)."""

from __future__ import annotations

import csv
import json

import pytest

from app.cli import main as t2i

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synth_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "katz.json"
    assert t2i(["trace", "--no-progress", "synth", "--requests", "2000", "--instances", "4",
                "--base-models", "40", "--loras", "200", "--controlnets", "4", "--seed", "3",
                "--out", str(path)]) == 0
    return path


def test_replay_maps_sends_and_accounts_for_every_request(base_url, http, synth_trace, tmp_path, capsys):
    out = tmp_path / "replay"
    rc = t2i(["replay", "--trace", str(synth_trace), "--format", "katz", "--url", base_url,
              "--out", str(out), "--max-requests", "16", "--arrival", "poisson", "--rate", "2",
              "--slo-s", "30", "--exclude", "broken-sd,broken-lora", "--json", "--no-progress"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["sent"] == 16 == s["completed"] + s["failed"] + s["timed_out"]
    assert s["completed"] == 16, s["errors"]  # the mapping sends nothing the service refuses
    assert s["latency_p50_s"] > 0 and s["stages"]["inference_s"]["mean"] > 0
    listed = http.get("/v1/models").json()
    ids = {m["id"]: m["kind"] for m in listed["data"]}
    with (out / "records.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16
    for row in rows:
        assert ids[row["base_model"]] == "base" and row["model"] == row["base_model"]
        assert row["replica"]  # the BaseModel replica that answered
        assert float(row["latency_s"]) >= float(row["total_s"])
    mapping = json.loads((out / "mapping.json").read_text())
    for trace_id, lora in mapping["loras"].items():
        assert ids[lora] == "lora", trace_id
    assert "broken-sd" not in {r["base_model"] for r in rows}  # --exclude kept it out
