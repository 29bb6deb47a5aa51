"""t2i compare: two replays of one slice, paired, with block-bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from trace_replay.replay.compare import compare, main, read_records
from trace_replay.replay.driver import Record
from trace_replay.replay.report import write_records

SLO = 1.0


def replay(tmp_path, name: str, latencies, loads, models=None, outcomes=None):
    """A records.csv as `t2i replay --out` writes it: request i sent at i s, answered latency later."""
    recs = []
    for i, (lat, load) in enumerate(zip(latencies, loads)):
        r = Record(index=i, scheduled_s=float(i), base_model=(models or ["m0"] * len(latencies))[i],
                   n_loras=0, n_controlnets=0, steps=2, sent_s=float(i), done_s=float(i) + lat,
                   outcome=(outcomes or ["completed"] * len(latencies))[i], http_status=200,
                   timings={"load_s": load})
        recs.append(r)
    return write_records(tmp_path / name / "records.csv", recs).parent


def test_a_real_difference_has_an_interval_that_excludes_no_difference(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    base = rng.uniform(0.2, 0.9, n)
    a = replay(tmp_path, "a", base, np.full(n, 1.0))
    late = base.copy()
    late[rng.random(n) < 0.3] += 1.0  # B: about 30% of requests late, A: none
    b = replay(tmp_path, "b", late, np.full(n, 0.5))
    res = compare([(read_records(a), read_records(b))], SLO)
    assert res["a"]["slo_violation_rate"] == 0.0
    assert res["ratio"]["load_seconds"] == pytest.approx([0.5, 0.5, 0.5])  # every draw halves it
    point, low, high = res["violation_points"]
    assert 20 < low < point < high < 40
    assert res["blocks"] == n // 25


def test_the_same_requests_reshuffled_have_intervals_that_hold_no_difference(tmp_path):
    """B's requests took A's latencies and loads in another order: the same totals, different
    blocks; the interval must not claim a difference."""
    rng = np.random.default_rng(1)
    n = 500
    lat, load = rng.exponential(0.5, n), rng.exponential(0.1, n)
    order = rng.permutation(n)
    a = replay(tmp_path, "a", lat, load)
    b = replay(tmp_path, "b", lat[order], load[order])
    res = compare([(read_records(a), read_records(b))], SLO)
    point, low, high = res["violation_points"]
    assert point == pytest.approx(0.0) and low < 0 < high
    for fig in ("load_seconds", "latency_p99_s", "slo_violation_rate"):
        _, low, high = res["ratio"][fig]
        assert low < 1 < high, fig


def test_blocks_are_drawn_for_both_replays_together(tmp_path):
    """B is A 10% faster on every request, across queue episodes of very different latency: drawn
    in pairs, every resample sees x0.90; drawn apart, the episodes would widen it to noise."""
    rng = np.random.default_rng(3)
    lat = np.repeat(rng.exponential(1.0, 20), 25) * rng.uniform(0.9, 1.1, 500)  # 20 episodes
    a = replay(tmp_path, "a", lat, np.ones(500))
    b = replay(tmp_path, "b", 0.9 * lat, np.ones(500))
    res = compare([(read_records(a), read_records(b))], SLO, n_resamples=500)
    for fig in ("latency_p50_s", "latency_p99_s"):
        assert res["ratio"][fig] == pytest.approx([0.9, 0.9, 0.9], abs=1e-4), fig  # the CSV keeps 6 decimals


def test_repeats_pool_their_blocks_and_narrow_the_interval(tmp_path):
    rng = np.random.default_rng(2)

    def pair(k):
        x = rng.uniform(0.2, 1.2, 200)
        return (read_records(replay(tmp_path, f"a{k}", x, np.ones(200))),
                read_records(replay(tmp_path, f"b{k}", x + rng.normal(0.1, 0.3, 200), np.ones(200))))

    one = compare([pair(0)], SLO)
    four = compare([pair(0), pair(1), pair(2), pair(3)], SLO)
    assert four["requests"] == 800 and four["blocks"] == 32
    width = lambda r: r["violation_points"][2] - r["violation_points"][1]  # noqa: E731
    assert width(four) < width(one)


def test_a_failed_request_is_a_violation_and_has_no_latency(tmp_path):
    a = replay(tmp_path, "a", [0.5] * 50, [0.0] * 50)
    b = replay(tmp_path, "b", [0.5] * 49 + [0.1], [0.0] * 50, outcomes=["completed"] * 49 + ["failed"])
    res = compare([(read_records(a), read_records(b))], SLO)
    assert res["b"]["slo_violation_rate"] == pytest.approx(1 / 50)
    assert res["b"]["latency_p50_s"] == pytest.approx(0.5)


def test_replays_of_different_slices_are_refused(tmp_path):
    a = read_records(replay(tmp_path, "a", [0.5] * 60, [0.0] * 60))
    shorter = read_records(replay(tmp_path, "b", [0.5] * 59, [0.0] * 59))
    other = read_records(replay(tmp_path, "c", [0.5] * 60, [0.0] * 60, models=["m0"] * 59 + ["m1"]))
    with pytest.raises(ValueError, match="not the same slice: A sent 60 requests, B 59"):
        compare([(a, shorter)], SLO)
    with pytest.raises(ValueError, match="request 59 is m0 in A and m1 in B"):
        compare([(a, other)], SLO)
    with pytest.raises(ValueError, match="too few to resample"):
        compare([(a, a)], SLO, block=100)


def test_the_command_prints_the_table_and_names_a_missing_folder(tmp_path, capsys):
    a = replay(tmp_path, "ray", [0.5] * 100, [1.0] * 100)
    b = replay(tmp_path, "ours", [0.5] * 50 + [1.5] * 50, [0.5] * 100)
    assert main([str(a), str(b), "--slo-s", "1", "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "B = ours vs A = ray" in out and "x 0.50" in out and "+50.0" in out
    assert main([str(a), str(tmp_path / "nowhere"), "--slo-s", "1"]) == 2
    assert "nowhere: no records.csv there" in capsys.readouterr().err
