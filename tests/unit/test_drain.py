"""policies.drain: the drain time a replica reports, live and simulated."""

from __future__ import annotations

import pytest

from policies.drain import LATE_FRACTION, drain_of, drain_s, late_floor
from trace_replay.simulator.engine import remaining_s
from trace_replay.simulator.worker import Worker


def test_running_remainder_then_a_floor_once_late_plus_the_queue():
    assert drain_s(10.0, None, 0.0, 1.5) == 1.5  # idle: the queue only
    assert drain_s(10.0, 13.0, late_floor(4.0), 1.5) == pytest.approx(3.0 + 1.5)
    assert drain_s(20.0, 13.0, late_floor(4.0), 1.5) == pytest.approx(LATE_FRACTION * 4.0 + 1.5)  # late


def test_drain_of_takes_starts_and_expectations():
    # started at 9 expecting 4 s (3 s left at 10), queued 0.5 and 1 s
    assert drain_of(10.0, [(9.0, 4.0)], [0.5, 1.0]) == pytest.approx(4.5)
    assert drain_of(10.0, [], []) == 0.0
    assert drain_of(100.0, [(9.0, 4.0)], [1.0]) == pytest.approx(0.4 + 1.0)


def test_the_simulators_replicas_report_the_same_figure():
    w = Worker.__new__(Worker)
    w.busy, w.exp_end, w.exp_floor, w.exp_queue = True, 13.0, late_floor(4.0), 2.0
    for now in (9.5, 12.0, 30.0):
        assert remaining_s(w, now) == drain_of(now, [(9.0, 4.0)], [2.0])
    w.busy = False
    assert remaining_s(w, 12.0) == 2.0
