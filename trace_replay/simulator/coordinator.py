"""The coordinator policy set's control in the simulator: a thin adapter over ``policies.coordination``.

The decisions (popularity, re-plan cadence, placement pins and band pools, warm arms, bandit
prefetch, its reward, prior, calibration and hit accounting) are the pure core's, the same code
the live ``deployments.coordinator.CacheCoordinator`` runs; this module only turns simulator
events into core calls and the core's actions into simulator mechanism:

- every routed request -> ``routed`` (replica = worker index, pipeline id interned up front);
- every residency change the engine reports (``sim.track.keys``: loads, evictions, the host and
  disk tiers' own evictions, a stopped GPU) -> ``tiers_changed`` with each key's fastest tier;
- a control tick -> ``tick``; a plan's pins become each worker's ``pinned`` set (never evicted),
  its pools and bands go to the ``PolicyRouter`` (band pools), and idle workers lacking pins
  load them at once;
- a worker whose queue empties -> ``idle``; what it returns is loaded as a prefetch job
  (``Simulation.start_prefetch``) and its seconds go back through ``prefetch_loaded``.

The tier matrix is the core's, shared with the ``PolicyRouter`` when that is the router (one
array, kept current here), so routing, placement and prefetch read the same residency.

Pipeline ids are interned up front, vectorised: a pipeline is the set of its component keys, so
an order-free 64-bit hash (sum of per-key random words) names it; ids are then renumbered in
order of first appearance, the order in which the live adapter interns them as reports arrive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policies.coordination import Coordination
from policies.eviction import is_stateful
from policies.snapshot import DISK, GPU, HOST, REMOTE
from trace_replay.simulator.config import SimConfig
from trace_replay.simulator.snapshots import component_table
from trace_replay.simulator.worker import Worker


def pipeline_ids(offsets: np.ndarray, keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """(pipeline id per request, first request of each pipeline) from the CSR component lists;
    ids numbered in order of first appearance."""
    words = np.random.default_rng(0x5EED).integers(1, 2**63 - 1, size=max(n_keys, 1), dtype=np.int64)
    h = np.add.reduceat(words[keys].astype(np.uint64), offsets[:-1]) if keys.size else np.zeros(0, np.uint64)
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inv.reshape(-1)].astype(np.int64), first[order].astype(np.int64)


class _Components(Sequence):
    """Lazy per-pipeline component arrays (base first, then the adapters by id), from the first
    request of each pipeline."""

    def __init__(self, offsets: np.ndarray, keys: np.ndarray, first: np.ndarray) -> None:
        self.o, self.k, self.first, self.cache = offsets, keys, first, {}

    def __len__(self) -> int:
        return int(self.first.size)

    def __getitem__(self, p):
        c = self.cache.get(p)
        if c is None:
            r = self.first[p]
            row = self.k[self.o[r]:self.o[r + 1]]
            c = self.cache[p] = np.concatenate([row[:1], np.unique(row[1:])])
        return c


class Coordinator:
    """Adapter: ``attach`` to a simulation, then the engine calls ``wrap_route``'s wrapper per
    request, ``keys`` on residency changes, ``on_tick`` and ``on_idle``."""

    def __init__(self, cfg: SimConfig, **core_args) -> None:
        self.core = Coordination(**core_args)
        self.rng = np.random.default_rng(cfg.seed + 1)

    def attach(self, sim, runtime) -> None:
        self.sim = sim
        wl = sim.wl
        self.pid, first = pipeline_ids(wl.comp_offsets, wl.comp_key, wl.n_keys)
        self.pid_list = self.pid.tolist()
        self.comps = _Components(wl.comp_offsets, wl.comp_key, first)
        ws = sim.workers
        self.st = self.core.new_state(len(ws), component_table(sim), self.comps, self._gpu_bytes(),
                                      n_pipelines=len(self.comps))
        self.router = runtime.router if hasattr(runtime.router, "band") else None  # a PolicyRouter
        self.index = self.router.index if self.router is not None else None
        if self.router is not None:
            self.router.pid = self.pid_list
            self.st.tier = self.router.tier  # one residency matrix for routing and control
        sim.track = self  # the engine reports residency changes here (and the router reads them)
        self.tiers = self.st.tier.tolist()  # per worker, the tier row as a list (compared per key)
        for w in ws:
            self.keys(w, list(w.slot_of))

    def _gpu_bytes(self) -> np.ndarray:
        return np.array([w.cap_bytes if w.routable else 0 for w in self.sim.workers], np.float64)

    def wrap_route(self, route):
        routed, st, pids = self.core.routed, self.st, self.pid_list

        def route_and_observe(i: int, comps: list, now: float) -> Worker:
            w = route(i, comps, now)
            if w is not None:  # None: held by the router; routed (and counted) when dispatched
                routed(st, w.idx, pids[i], now)
            return w

        return route_and_observe

    # -- events from the engine ------------------------------------------------------------------
    def keys(self, w: Worker, keys) -> None:
        """Residency of ``keys`` on ``w`` changed: each is now at the fastest tier holding it."""
        host, disk, gpu = w.host, w.disk, w.slot_of
        st = self.st
        j = w.idx
        known = self.tiers[j]  # what st.tier[j] holds, as a list: most reported keys did not move
        ix = self.index
        if not st.open[j]:  # nothing to close (the common case, once per load): record residency
            row = st.tier[j]  # in one pass, into the tier matrix and the router's index (its
            if ix is not None:  # set_tier, inlined: this runs for ~3 keys per load)
                load_rows, cost_rows, holders = ix.rows, ix.cost_rows, ix.gpu
            for k in keys:
                t = GPU if k in gpu else HOST if host is not None and k in host.items \
                    else DISK if disk is not None and k in disk.items else REMOTE
                if known[k] != t:
                    known[k] = row[k] = t
                    if ix is not None:
                        load_rows[k][j] = cost_rows[k][t]
                        if t == GPU:
                            holders[k].add(j)
                        else:
                            holders[k].discard(j)
            return
        ks: list[int] = []
        ts: list[int] = []
        for k in keys:
            t = GPU if k in gpu else HOST if host is not None and k in host.items \
                else DISK if disk is not None and k in disk.items else REMOTE
            if known[k] != t:
                known[k] = t
                ks.append(k)
                ts.append(t)
        if ks:  # an open prefetch on w may lose its copy: the core decides
            self.core.tiers_changed(st, j, ks, ts, self.sim.now)
            if ix is not None:
                ix.set_tiers(j, ks, ts)

    def on_tick(self, now: float) -> None:
        st = self.st
        if not self.core.due(st, now):  # most ticks: no re-plan, nothing to gather
            return
        st.gpu_bytes[:] = self._gpu_bytes()
        plan = self.core.tick(st, now, self.sim.mean_job_s() if self.core.size_by_load else None)
        if plan is None:
            return
        if self.router is not None:  # band pools for policies.routing: hot pool from the plan
            self.router.band = plan.bands
            self.router.pool[:] = plan.pool
        ws = self.sim.workers
        # a bool mask over all keys only for an eviction policy ranked through numpy (the cost-aware
        # one-cache form and a stateful policy's memory check the pinned set itself; 100 masks per
        # plan were ~0.3 ms)
        ev = self.sim.rt.eviction
        masks = not hasattr(ev, "eviction_order") and not is_stateful(ev)
        n_keys = st.tier.shape[1]
        for w in ws:
            w.pinned = pins = plan.pins[w.idx]
            w.pin_mask = None
            if masks:
                w.pin_mask = mask = np.zeros(n_keys, dtype=bool)
                mask[list(pins)] = True
        for r in plan.lacking:
            w = ws[r]
            if not w.busy and not w.queue:
                self.on_idle(w, now)

    def on_idle(self, w: Worker, now: float) -> None:
        load = self.core.idle(self.st, w.idx, now, w.free_bytes, self.rng, w.active)
        if load is None:
            return
        paid = self.sim.start_prefetch(w, list(load.components), now)
        if load.prefetch:
            self.core.prefetch_loaded(self.st, w.idx, paid)

    def component_demand(self, now: float) -> np.ndarray:
        """Decayed demand per component (what cache-aware scale-down weighs a replica's cache by)."""
        return self.core.component_demand(self.st, now)
