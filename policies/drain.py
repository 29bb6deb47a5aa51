"""A replica's expected drain time: the seconds until its running and queued requests are done,
as far as the replica itself can tell. Routers read it as the queue wait (``busy_until - now``).

What a replica can observe: when its running request started, what that request was expected to
take (the mean compute of requests like it: the profile's per-model mean in the simulator, the
replica's own running mean per base model live), and the expected compute of each queued request.
It cannot know a sampled duration, so a request past its expected end is assumed to need a fixed
fraction of its expectation more (it knows it is late, not by how much).

The expectation is per request, not the replica's mean times its queue length: a replica running a
heavy pipeline (seconds) behind a light one's mean (a fraction of that) reported a fraction of its
real wait, and the router queued short requests behind long ones.

The simulator (``trace_replay.simulator.engine.remaining_s``) reports through ``drain_s``, and so
does the live replica (``deployments.replica_control.ReplicaControl.busy_s``) with
``control.per_model_compute`` on; off (its default, measured better live on the 2-core demo), the
replica reports its mean compute per request times its queue length.
"""

from __future__ import annotations

from collections.abc import Iterable

# A request past its expected end is expected to need this fraction of its expectation more
LATE_FRACTION = 0.1


def late_floor(expected_s: float) -> float:
    """The least remaining time a running request of ``expected_s`` is credited with."""
    return LATE_FRACTION * expected_s


def drain_s(now: float, run_end: float | None, run_floor: float, queued_s: float) -> float:
    """Seconds until the replica drains: the running request's expected remainder (its expected
    end ``run_end`` minus ``now``, at least ``run_floor``; None: nothing running) plus
    ``queued_s``, the queued requests' expected compute."""
    run = 0.0 if run_end is None else max(run_end - now, run_floor)
    return run + queued_s


def drain_of(now: float, running: Iterable[tuple[float, float]], queued: Iterable[float]) -> float:
    """``drain_s`` from the raw observations: ``running`` holds (start, expected seconds) of each
    running request (one on a replica that serves one at a time; several are summed), ``queued``
    the expected seconds of each queued one."""
    total = sum(queued)
    for start, expected in running:
        total += drain_s(now, start + expected, late_floor(expected), 0.0)
    return total
