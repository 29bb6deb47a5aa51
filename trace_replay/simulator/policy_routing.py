"""Routing through a ``policies.routing`` policy on a snapshot kept in place.

The fast routers of ``control.py`` read the simulator's own structures; this adapter instead
keeps the arrays of a ``policies.snapshot.ReplicaTable`` current as the simulation runs (tier of
every component on every replica, queue lengths, expected drain times, free bytes, model
counts) and asks the registry's router per request, as policies/README.md prescribes (the same
pure code the live ``deployments.routing.CacheAwareRouter`` calls on its snapshot). It costs more
per request (the router is O(replicas) numpy).

The drain time is what a replica could report, never the sampled end of its job: per replica the
expected end of the running job (``Worker.exp_end``: start + mean compute from the profile + the
expected loads it began), a floor for a job running late, and the queued jobs' expected compute;
at each route ``busy_until = max(exp_end, now + floor) + queued``, two numpy operations. The
snapshot covers every GPU (replica index = worker index); one that is stopped or starting shows
an endless queue, so no cost-aware router picks it (and a pick of one by a cost-blind router is
redirected to the least loaded routable).

Tier bookkeeping is incremental: the engine reports the keys whose residency changed on a worker
(a load, its evictions and the host/disk tiers' own evictions), and each is re-derived as the
fastest tier holding it.

Where the policy has an incremental form with the same decisions (``least-expected-latency``
without band pools, slack or budget: ``route_indexed``), the router also keeps its
``policies.routing.LatencyIndex`` (GPU holders and load seconds per component, idle workers) and
routes through that: a request an idle worker holds entirely on its GPU costs a few set
operations, any other about half the numpy of the snapshot form; busy_until is computed only when
the index asks for it.
"""

from __future__ import annotations

import numpy as np

from policies.routing import ROUTING, LatencyIndex
from policies.snapshot import COLD, REMOTE, SHARED, ClusterSnapshot, ReplicaTable, RouteRequest
from trace_replay.simulator.snapshots import component_table
from trace_replay.simulator.worker import Worker


_FULL = 1 << 40  # queue length shown for a GPU that is not routable


class PolicyRouter:
    max_ongoing = 1 << 30  # never holds a request (the policy always names a replica)

    def __init__(self, policy: str = "least-expected-latency", indexed: bool = True, **args) -> None:
        self.policy = ROUTING.create(policy, **args)
        # route through the policy's incremental form where it has one (same decisions; False:
        # always the snapshot form, for tests that compare the two)
        self.indexed = bool(indexed)
        self.pid: list[int] | None = None  # pipeline id per request (the coordinator sets these)
        self.band: np.ndarray | None = None  # band per pipeline id at the last plan

    def attach(self, sim, routable: list[Worker]) -> None:
        self.sim = sim
        self.table = component_table(sim)
        n = len(sim.workers)
        self.tier = np.full((n, self.table.n), REMOTE, dtype=np.int8)
        self._q = np.zeros(n, np.int64)
        self._bu = np.zeros(n)
        self.run_end = np.zeros(n)  # expected end of the running job (0: idle; inf: not routable)
        self.run_floor = np.zeros(n)  # expected remainder once it runs late
        self.queued = np.zeros(n)  # queued jobs' expected compute
        self._gpu_free = np.array([w.free_bytes for w in sim.workers], np.int64)
        self._host_free = np.array([w.host.free if w.host else 0 for w in sim.workers], np.int64)
        self.pool = np.full(n, SHARED, np.int8)
        self._n_models = np.zeros(n, np.int64)
        # which machine each GPU is on (cluster.replicas_per_host), for a policy that prices
        # contention between replicas sharing one (host_contention > 0); the request's expected
        # compute (the profile mean) goes with it
        self.contended = (getattr(self.policy, "host_contention", 0.0) > 0
                          or getattr(self.policy, "host_slots", 0) > 0)
        hosts = np.arange(n, dtype=np.int64) // sim.cfg.cluster.replicas_per_host if self.contended else None
        self.replicas = ReplicaTable(self.tier, self._q, self._bu, self._gpu_free, self._host_free,
                                     self.pool, self._n_models, hosts)
        self.rng = np.random.default_rng(sim.cfg.seed + 2)
        self.index = (LatencyIndex(n, self.table) if self.indexed and getattr(self.policy, "indexable", False)
                      else None)
        self._now = 0.0
        self._wait = np.zeros(n)
        self._negative: set[int] = set()  # workers showing negative floor or queued seconds (rounding)
        sim.track = self
        sim.watch = self.changed
        for w in sim.workers:
            self.changed(w)

    def _busy_until(self) -> np.ndarray:
        """Expected drain time per worker at the route being decided (``self._now``)."""
        bu = self._bu
        np.add(self.run_floor, self._now, out=bu)
        np.maximum(bu, self.run_end, out=bu)
        bu += self.queued
        return bu

    def _queue_wait(self) -> np.ndarray:
        """``ClusterSnapshot.queue_wait_s()`` of the snapshot form, max(busy_until, now) - now, in
        a scratch array. With no negative floor or queued seconds busy_until >= now already
        (now + floor >= now, + queued >= 0), so the max is skipped: the same values."""
        w = self._wait
        np.add(self.run_floor, self._now, out=w)
        np.maximum(w, self.run_end, out=w)
        w += self.queued
        if self._negative:
            np.maximum(w, self._now, out=w)
        w -= self._now
        return w

    def __call__(self, i: int, comps: list, now: float) -> Worker:
        if self.index is not None:
            self._now = now
            w = self.sim.workers[self.policy.route_indexed(self.index, now, comps, self._queue_wait, self.rng)]
            if not w.routable:
                w = min((x for x in self.sim.workers if x.routable), key=lambda x: len(x.queue) + x.busy)
            return w
        bu = self._bu
        np.add(self.run_floor, now, out=bu)
        np.maximum(bu, self.run_end, out=bu)
        bu += self.queued
        snap = ClusterSnapshot(now, self.replicas, self.table)
        p = self.pid[i] if self.pid is not None else 0
        band = int(self.band[p]) if self.band is not None and p < self.band.size else COLD
        compute = self.sim.expect(i) if self.contended else 0.0
        w = self.sim.workers[self.policy.route(
            snap, RouteRequest(p, np.array(comps, dtype=np.int64), band, now, compute), self.rng)]
        if not w.routable:  # a policy blind to costs (pow-2 on queues) can still draw a stopped GPU
            w = min((x for x in self.sim.workers if x.routable), key=lambda x: len(x.queue) + x.busy)
        return w

    # -- the snapshot's per-replica counts: kept per event for the snapshot form, derived on read
    # for the indexed one (which reads only tiers and drain times)
    def _counts(self) -> None:
        if self.index is not None:
            for w in self.sim.workers:
                self._count(w)

    @property
    def busy_until(self) -> np.ndarray:
        """Expected drain times as of the latest route (the indexed form computes them on demand)."""
        return self._busy_until() if self.index is not None else self._bu

    # queue lengths, free GPU and host bytes, models per replica: one refresh, then the array
    q = property(lambda self: self._counted(self._q))
    gpu_free = property(lambda self: self._counted(self._gpu_free))
    host_free = property(lambda self: self._counted(self._host_free))
    n_models = property(lambda self: self._counted(self._n_models))

    def _counted(self, array: np.ndarray) -> np.ndarray:
        self._counts()
        return array

    def _count(self, w: Worker) -> None:
        j = w.idx
        self._gpu_free[j] = w.free_bytes
        self._host_free[j] = w.host.free if w.host is not None else 0
        self._n_models[j] = w.n_base
        self._q[j] = len(w.queue) + w.busy if w.routable else _FULL

    # -- bookkeeping the engine calls ------------------------------------------------------------
    def changed(self, w: Worker) -> None:
        """Queue, drain time, free bytes and model count of ``w`` after any change to it."""
        j = w.idx
        ix = self.index
        if ix is None:
            self._count(w)
            if not w.routable:  # stopped or starting: the snapshot shows it as never free
                self.run_end[j], self.queued[j] = np.inf, 0.0
            else:
                self.run_end[j], self.run_floor[j] = (w.exp_end, w.exp_floor) if w.busy else (0.0, 0.0)
                self.queued[j] = w.exp_queue
            return
        # the same drain-time arrays, plus the index's idle set: idle means busy_until =
        # max(0 + now, 0) + 0 = now at every route (checks on the Python values just written)
        if not w.routable:
            self.run_end[j], self.queued[j] = np.inf, 0.0
            ix.idle.discard(j)
            neg = self.run_floor[j] < 0
        elif w.busy:
            floor, q = w.exp_floor, w.exp_queue
            self.run_end[j], self.run_floor[j], self.queued[j] = w.exp_end, floor, q
            ix.idle.discard(j)
            neg = floor < 0 or q < 0
        else:
            q = w.exp_queue
            self.run_end[j] = self.run_floor[j] = 0.0
            self.queued[j] = q
            if q == 0.0:
                ix.idle.add(j)
            else:
                ix.idle.discard(j)
            neg = q < 0
        if neg:
            self._negative.add(j)
        elif self._negative:
            self._negative.discard(j)

    def keys(self, w: Worker, keys) -> None:
        """Re-derive the tier of ``keys`` on ``w``: the fastest tier that holds each."""
        row = self.tier[w.idx]
        for k in keys:
            row[k] = w.tier_of(k)
        if self.index is not None:
            self.index.set_tiers(w.idx, keys, row[keys].tolist())
