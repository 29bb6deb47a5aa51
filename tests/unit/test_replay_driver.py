"""The replay driver over real HTTP against a small scripted server (``replay_server.py``).

The full service is exercised by the integration test ``tests/integration/test_replay_live.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest

from app.cli import main as t2i
from trace_replay.replay.driver import replay
from trace_replay.replay.mapping import ReplayRequest
from trace_replay.replay.report import summarize

from tests.unit.replay_server import server  # noqa: F401,E402  (the fixture)


def _reqs(n: int, gap: float) -> list[ReplayRequest]:
    return [ReplayRequest(i, i * gap, "b0", (), (), 2, 1, i) for i in range(n)]


def test_open_loop_sends_on_time_while_the_server_is_slow(server):
    server.mode = ("ok", 0.4)
    run = asyncio.run(replay(_reqs(8, 0.05), server.url, timeout_s=10))
    sent = np.array([r.sent_s for r in run.records])
    sched = np.array([r.scheduled_s for r in run.records])
    # a closed loop would send the 8th after ~7 x 0.4 s; open loop sends it at 0.35 s
    assert np.all(sent - sched < 0.2), sent - sched
    assert all(r.outcome == "completed" for r in run.records)
    assert all(r.latency_s >= 0.4 for r in run.records)
    assert {r.replica for r in run.records} == {"replica-0", "replica-1"}
    s = summarize(run, slo_s=1.0)
    assert s["sent"] == s["completed"] + s["failed"] + s["timed_out"] == 8
    assert s["slo_violation_rate"] == 0.0 and s["latency_p50_s"] >= 0.4
    assert s["load_seconds"] == pytest.approx(0.08)
    # load_s split into what the service reported (parts it did not report count 0) and the rest
    assert s["load_seconds_parts"] == pytest.approx({"fetch_s": 0.032, "swap_s": 0.008, "unmerge_s": 0.0,
                                                     "merge_s": 0.0, "models_s": 0.04})
    assert "unknown_s" not in run.records[0].timings


def test_concurrency_limit_queues_and_latency_counts_the_wait(server):
    server.mode = ("ok", 0.3)
    run = asyncio.run(replay(_reqs(4, 0.0), server.url, timeout_s=10, concurrency_limit=1))
    lat = sorted(r.latency_s for r in run.records)
    assert lat[-1] >= 4 * 0.3 - 0.05  # the last waited for three others
    s = summarize(run, slo_s=0.5)
    assert s["slo_violations"] >= 2


def test_failing_service_stops_after_max_failures_and_keeps_records(server):
    server.mode = ("error", 503)
    run = asyncio.run(replay(_reqs(30, 0.02), server.url, timeout_s=5, max_failures=3))
    assert run.aborted and run.stop_reason.startswith("failures: 3 requests in a row failed")
    assert "503" in run.stop_reason and "scripted failure" in run.stop_reason
    s = summarize(run, slo_s=1.0)
    assert s["failed"] >= 3 and s["not_sent"] > 0
    assert s["sent"] == s["completed"] + s["failed"] + s["timed_out"]
    assert s["slo_violation_rate"] == 1.0


def test_timeouts_are_counted_as_such(server):
    server.mode = ("ok", 3.0)
    run = asyncio.run(replay(_reqs(2, 0.0), server.url, timeout_s=0.3))
    assert [r.outcome for r in run.records] == ["timeout", "timeout"]
    assert summarize(run, slo_s=1.0)["timed_out"] == 2


def test_duration_bounds_what_is_sent(server):
    server.mode = ("ok", 0.0)
    run = asyncio.run(replay(_reqs(10, 0.1), server.url, timeout_s=5, duration_s=0.45))
    assert run.stop_reason == "duration"
    assert [r.outcome for r in run.records].count("completed") == 5


def test_cli_end_to_end_writes_records_summary_and_figures(server, tmp_path, capsys):
    from tests.trace_fixtures import FIX

    server.mode = ("ok", 0.02)
    server.bodies.clear()
    out = tmp_path / "run"
    rc = t2i(["replay", "--trace", str(FIX / "katz_small.json"), "--format", "katz", "--url", server.url,
              "--out", str(out), "--arrival", "poisson", "--rate", "50", "--json", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("requests", "slo_violation_rate", "latency_p50_s", "latency_p95_s", "latency_p99_s",
                "load_seconds", "goodput", "request_throughput", "slo_attainment", "stages"):
        assert key in summary
    assert summary["slo_s"] == 1.0  # the service's SLO from /v1/models
    assert summary["completed"] == summary["requests"] == len(server.bodies)
    for body in server.bodies:  # trimmed to the limits the service announced
        assert len(body.get("loras", [])) <= 1 and len(body.get("controlnets", [])) <= 1
        assert body["base_model"] in ("b0", "b1") and body["num_inference_steps"] <= 4
    assert summary["mapping"]["requests_trimmed"] > 0
    for name in ("records.csv", "summary.json", "mapping.json", "replay.png"):
        assert (out / name).stat().st_size > 0
    lines = (out / "records.csv").read_text().splitlines()
    assert len(lines) == 1 + summary["planned"] and "replica" in lines[0]


def test_cli_unreachable_url_is_a_clear_error(tmp_path, capsys):
    from tests.trace_fixtures import FIX

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    rc = t2i(["replay", "--trace", str(FIX / "katz_small.json"), "--format", "katz",
              "--url", f"http://127.0.0.1:{port}", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot reach the service" in err and str(port) in err


def test_cli_bad_trace_names_file_and_line(server, tmp_path, capsys):
    from tests.trace_fixtures import FIX

    rc = t2i(["replay", "--trace", str(FIX / "katz_bad.json"), "--format", "katz", "--url", server.url,
              "--out", str(tmp_path)])
    assert rc == 2
    assert "katz_bad.json:" in capsys.readouterr().err
