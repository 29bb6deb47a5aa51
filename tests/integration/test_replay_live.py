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


def test_parity_live_and_simulated_on_a_short_slice(base_url, serve_config, synth_trace, tmp_path, capsys):
    """The whole chain on the suite's service (1 BaseModel replica): profile, then one slice live
    and simulated twice. The bound is on the second simulation, each request holding the replica
    for the seconds it computed live: what is left is the control plane's error (queueing, which
    request waits for which, loads), about 1% on a run whose first prediction was 47% low. The
    first prediction, from the profile's service times, is not bounded here: on this shared
    2-core machine the service's compute doubled for 15 s in one run and was 65% over the profile
    in another, and queueing multiplies that (tests/unit/test_replay_parity.py bounds it on a
    scripted service whose costs are known). The first 6 requests are a warm-up on both sides:
    the suite's service already holds both base models, the simulation loads them."""
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(serve_config.model_dump(mode="json")))
    profile = tmp_path / "profile.yaml"
    assert t2i(["profile", "--url", base_url, "--out", str(profile), "--repeats", "2", "--adapters", "1",
                "--models", "tiny-sd-light,tiny-sd-heavy", "--no-progress"]) == 0
    capsys.readouterr()
    rc = t2i(["parity", "--trace", str(synth_trace), "--format", "katz", "--url", base_url,
              "--config", str(config), "--profile", str(profile), "--exclude", "broken-sd,broken-lora",
              "--arrival", "poisson", "--rate", "0.7", "--max-requests", "30", "--slo-s", "2",
              "--warmup-requests", "6",
              "--out", str(tmp_path / "parity"), "--json", "--no-progress"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["gpus"] == 1 and doc["live"]["completed"] == doc["sim"]["completed"] == 24
    assert doc["sim_live_service"]["completed"] == 24
    assert doc["live_summary"]["completed"] == 30 and doc["warmup_requests"] == 6
    for key in ("latency_mean_s", "latency_p50_s", "latency_p95_s"):
        assert abs(doc["live_service"]["relative_error"][key]) < 0.15, (
            key, doc["live"][key], doc["sim_live_service"][key], doc["sim"][key])
