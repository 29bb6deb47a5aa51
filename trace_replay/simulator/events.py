"""Event kinds and the tie-break order of the simulator's heap.

Events are tuples ``(time, priority, sequence, ...)`` compared lexicographically, so ties are
never broken by accident (e.g. by comparing payloads). At equal time:

1. ``FINISH``  - a worker completes a job (request or prefetch) and frees itself, so that
2. ``READY``   - a scaled-up replica becomes routable, and then
3. ``ARRIVAL`` - requests arriving at that instant see the freed / new capacity; arrivals at the
   same instant are routed in trace order (file order already broke timestamp ties);
4. ``TICK``    - periodic control (autoscaling, placement) sees every arrival and completion of
   that instant.

Within one priority, ``sequence`` (the order the events were scheduled) decides: two workers
finishing at the same time free in the order their jobs started.
Arrivals never enter the heap: they are a sorted stream merged against the heap's top with the
same rule (``arrival_first``), which halves the heap traffic.
"""

from __future__ import annotations

FINISH, READY, ARRIVAL, TICK = 0, 1, 2, 3
EVENT_NAMES = ("finish", "ready", "arrival", "tick")


def arrival_first(arrival_time: float, top: tuple) -> bool:
    """True if an arrival at ``arrival_time`` goes before the heap event ``top``."""
    return arrival_time < top[0] or (arrival_time == top[0] and ARRIVAL < top[1])
