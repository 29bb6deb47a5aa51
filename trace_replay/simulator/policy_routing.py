"""Routing through a ``policies.routing`` policy (the live router's code) on a snapshot kept in place.

The fast routers of ``control.py`` read the simulator's own structures; this adapter instead
keeps the arrays of a ``policies.snapshot.ReplicaTable`` current as the simulation runs (tier of
every component on every replica, queue lengths, expected drain times, free bytes, model
counts) and asks the registry's router per request, as policies/README.md prescribes. It costs
more per request (the router is O(replicas) numpy). The snapshot covers every GPU (replica index
= worker index); one that is stopped or starting shows an endless queue, so no cost-aware router
picks it (and a pick of one by a cost-blind router is redirected to the least loaded routable).

Tier bookkeeping is incremental: the engine reports the keys whose residency changed on a worker
(a load, its evictions and the host/disk tiers' own evictions), and each is re-derived as the
fastest tier holding it.
"""

from __future__ import annotations

import numpy as np

from policies.routing import ROUTING
from policies.snapshot import COLD, DISK, GPU, HOST, REMOTE, SHARED, ClusterSnapshot, ReplicaTable, RouteRequest
from trace_replay.simulator.snapshots import component_table
from trace_replay.simulator.worker import Worker


_FULL = 1 << 40  # queue length shown for a GPU that is not routable


class PolicyRouter:
    max_ongoing = 1 << 30  # never holds a request (the policy always names a replica)

    def __init__(self, policy: str = "least-expected-latency", **args) -> None:
        self.policy = ROUTING.create(policy, **args)
        self.pid: list[int] | None = None  # pipeline id per request (the coordinator sets these)
        self.band: np.ndarray | None = None  # band per pipeline id at the last plan

    def attach(self, sim, routable: list[Worker]) -> None:
        self.sim = sim
        self.table = component_table(sim)
        n = len(sim.workers)
        self.tier = np.full((n, self.table.n), REMOTE, dtype=np.int8)
        self.q = np.zeros(n, np.int64)
        self.busy_until = np.zeros(n)
        self.gpu_free = np.array([w.free_bytes for w in sim.workers], np.int64)
        self.host_free = np.array([w.host.free if w.host else 0 for w in sim.workers], np.int64)
        self.pool = np.full(n, SHARED, np.int8)
        self.n_models = np.zeros(n, np.int64)
        self.replicas = ReplicaTable(self.tier, self.q, self.busy_until, self.gpu_free, self.host_free,
                                     self.pool, self.n_models)
        self.rng = np.random.default_rng(sim.cfg.seed + 2)
        self.mean_job = float(sim.infer.mean()) if sim.infer.size else 1.0
        sim.track = self
        sim.watch = self.changed
        for w in sim.workers:
            self.changed(w)

    def __call__(self, i: int, comps: list, now: float) -> Worker:
        snap = ClusterSnapshot(now, self.replicas, self.table)
        p = self.pid[i] if self.pid is not None else 0
        band = int(self.band[p]) if self.band is not None and p < self.band.size else COLD
        w = self.sim.workers[self.policy.route(snap, RouteRequest(p, np.array(comps, dtype=np.int64), band, now),
                                               self.rng)]
        if not w.routable:  # a policy blind to costs (pow-2 on queues) can still draw a stopped GPU
            w = min((x for x in self.sim.workers if x.routable), key=lambda x: len(x.queue) + x.busy)
        return w

    # -- bookkeeping the engine calls ------------------------------------------------------------
    def changed(self, w: Worker) -> None:
        """Queue, drain time, free bytes and model count of ``w`` after any change to it."""
        j = w.idx
        self.gpu_free[j] = w.free_bytes
        self.host_free[j] = w.host.free if w.host is not None else 0
        self.n_models[j] = w.n_base
        if not w.routable:  # stopped or starting: the snapshot shows it as never free
            self.q[j], self.busy_until[j] = _FULL, np.inf
        else:
            self.q[j] = len(w.queue) + w.busy
            self.busy_until[j] = w.ready_at + len(w.queue) * self.mean_job

    def keys(self, w: Worker, keys) -> None:
        """Re-derive the tier of ``keys`` on ``w``: the fastest tier that holds each."""
        row = self.tier[w.idx]
        host, disk, gpu = w.host, w.disk, w.slot_of
        for k in keys:
            if k in gpu:
                row[k] = GPU
            elif host is not None and k in host.items:
                row[k] = HOST
            elif disk is not None and k in disk.items:
                row[k] = DISK
            else:
                row[k] = REMOTE
