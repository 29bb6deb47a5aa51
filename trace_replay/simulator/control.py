"""Routers and control loops the simulator ships with, as fast per-request mechanisms.

Why here and not in ``policies/``: routing runs once per request, and at 20 us a request a
snapshot-building call is out of budget, so the per-request routers below read the simulator's
own structures (the base-model -> holders index, queue lengths). They mirror documented
behaviour: ``Pow2Holder`` is Ray Serve's multiplexed-model routing. Slower, cluster-wide
decisions (placement, prefetch, scaling targets) come from ``policies/`` on control ticks.
"""

from __future__ import annotations

import math

from policies.drain import drain_s
from trace_replay.simulator.worker import Worker


def qlen(w: Worker) -> int:
    return len(w.queue) + w.busy


def two_distinct(seq, rnd) -> tuple:
    """Two different items of ``seq`` drawn uniformly (the only one twice when it has one), as
    Ray's ``pow_2_router.py`` draws its two choices; ``rnd()`` is uniform in [0, 1)."""
    n = len(seq)
    x = int(rnd() * n)
    if n == 1:
        return seq[x], seq[x]
    y = int(rnd() * (n - 1))
    return seq[x], seq[y + (y >= x)]


class Pow2Holder:
    """Ray Serve multiplexing: power-of-two choices among replicas holding the model (here: the
    base model) by queue length; if none holds it, or the pick is at ``max_ongoing`` (Ray's
    ``max_ongoing_requests``, default 5: running + queued on a replica), power-of-two over all
    routable replicas, fewer loaded models first on a tie (Ray falls back to the replica with the
    fewest multiplexed models). When every replica is at ``max_ongoing`` Ray holds the request in
    the router until one has room: the router returns None and the engine holds it (FIFO),
    re-routing when a replica frees a place or a new one becomes ready (``hold_when_full``).

    The two choices are two *distinct* replicas, as Ray's ``PowerOfTwoChoicesRequestRouter``
    draws them (``pow_2_router.py``: i, then j among the others). Drawn with replacement, one
    fallback in four on four replicas was a single random pick, and the simulated Ray had more
    violations than the live one (README.md, "The simulator's Ray was worse than Ray")."""

    def __init__(self, max_ongoing: int = 5, hold_when_full: bool = True) -> None:
        self.max_ongoing = max_ongoing
        self.hold_when_full = hold_when_full

    def attach(self, sim, routable: list[Worker]) -> None:
        self.sim, self.routable, self.holders, self.rnd = sim, routable, sim.holders, sim.rnd.random
        # routable replicas below max_ongoing, as a list with positions (O(1) add, remove and
        # random draw): the saturated path draws from it instead of scanning 300 replicas
        self.room: list[Worker] = []
        self.room_pos: dict[int, int] = {}
        sim.watch = self.update
        for w in sim.workers:
            self.update(w)

    def update(self, w: Worker) -> None:
        """Keep ``room`` current after ``w``'s queue, job or routability changed."""
        has = w.routable and len(w.queue) + w.busy < self.max_ongoing
        pos = self.room_pos
        if has and w.idx not in pos:
            pos[w.idx] = len(self.room)
            self.room.append(w)
        elif not has and w.idx in pos:
            j = pos.pop(w.idx)
            last = self.room.pop()
            if last is not w:
                self.room[j] = last
                pos[last.idx] = j

    def __call__(self, i: int, comps: list, now: float) -> Worker | None:
        hold = self.holders[comps[0]]
        rnd = self.rnd
        cap = self.max_ongoing
        if hold:
            ws = self.sim.workers
            if len(hold) == 1:
                w = ws[next(iter(hold))]
            else:
                x, y = two_distinct(tuple(hold), rnd)
                a, b = ws[x], ws[y]
                w = a if qlen(a) <= qlen(b) else b
            if qlen(w) < cap:
                return w
        a, b = two_distinct(self.routable, rnd)
        ka, kb = (qlen(a), a.n_base), (qlen(b), b.n_base)
        w = a if ka <= kb else b
        if not self.hold_when_full or ka[0] < cap:
            return w
        # both samples full: Ray keeps sampling until a replica accepts; here a uniform draw among
        # the replicas with room, or None (hold) when there are none
        room = self.room
        return room[int(rnd() * len(room))] if room else None


class CacheAware:
    """Expected-completion routing: among the replicas holding the base model (up to ``fanout``)
    plus two random ones, the smallest (queued work + expected loads of the missing components,
    each from the fastest tier that holds it). Queued work is what the replica could report
    (``engine.remaining_s``): the running job's expected remainder (its expected duration from
    the profile minus its elapsed time, with a floor) plus the queued jobs' expected compute."""

    def __init__(self, fanout: int = 4) -> None:
        self.fanout = fanout

    def attach(self, sim, routable: list[Worker]) -> None:
        self.sim, self.routable, self.holders, self.rnd = sim, routable, sim.holders, sim.rnd.random
        self.host_s, self.disk_s, self.remote_s = sim.cost_host, sim.cost_disk, sim.cost_remote

    def cost(self, w: Worker, comps: list, now: float) -> float:
        c = drain_s(now, w.exp_end if w.busy else None, w.exp_floor, w.exp_queue)
        slot_of, host, disk = w.slot_of, w.host, w.disk
        for k in comps:
            if k in slot_of:
                continue
            if host is not None and k in host.items:
                c += self.host_s[k]
            elif disk is not None and k in disk.items:
                c += self.disk_s[k]
            else:
                c += self.remote_s[k]
        return c

    def __call__(self, i: int, comps: list, now: float) -> Worker:
        ws, r, rnd = self.sim.workers, self.routable, self.rnd
        hold = self.holders[comps[0]]
        cands = [ws[j] for j in (hold if len(hold) <= self.fanout else
                                 [tuple(hold)[int(rnd() * len(hold))] for _ in range(self.fanout)])]
        cands.append(r[int(rnd() * len(r))])
        cands.append(r[int(rnd() * len(r))])
        best, best_c = cands[0], math.inf
        for w in cands:
            c = self.cost(w, comps, now)
            if c < best_c:
                best, best_c = w, c
        return best
