"""The discrete-event loop: arrivals, jobs on workers, loads through the tiers, control ticks.

One worker runs one job at a time (ControlNet and adapter diversity defeat batching in production),
FIFO from its own queue. A request's job loads the components its GPU lacks (summed, one loader
per worker), then computes; the worker is busy for both. Load and service times were sampled up
front (``workload.py``); the loop only indexes, which is what keeps it near 20 us per request.
Metrics are not computed here: the loop fills per-request arrays and ``metrics.py`` reduces them.
Policies come from a ``PolicyRuntime`` (``policy_sets.py``): a router, an eviction policy from the
``policies.eviction`` registry, optional control (autoscaling, placement, prefetch) on ticks.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from trace_replay.simulator.config import SimConfig
from trace_replay.simulator.events import ARRIVAL, FINISH, READY, TICK
from trace_replay.simulator.oracle import NextUseOracle
from trace_replay.simulator.worker import Worker
from trace_replay.simulator.workload import BASE, Workload

_CHUNK = 1 << 15  # requests converted to Python lists at a time (bounded memory at 3.5M)


@dataclass
class Records:
    """Everything the loop records; metrics are computed from these after the run."""

    start: np.ndarray  # float64 job start per request
    finish: np.ndarray  # float64 completion per request (NaN = never completed)
    load_s: np.ndarray  # float64 seconds of loading charged to the request
    worker: np.ndarray  # int32 worker that served it
    misses: np.ndarray  # int16 components loaded for it
    completions: np.ndarray  # int8 times it completed (the conservation test wants all ones)
    load_by_kind: dict[int, float] = field(default_factory=dict)  # seconds of loading per kind
    loads_by_kind: dict[int, int] = field(default_factory=dict)
    prefetch_loads: int = 0
    prefetch_s: float = 0.0
    busy_s: np.ndarray | None = None  # per worker, accumulated in the loop
    idle_s: np.ndarray | None = None  # per worker, accumulated from the gaps between jobs
    active_series: list[tuple[float, int]] = field(default_factory=list)  # (time, routable replicas)
    makespan: float = 0.0


class Simulation:
    def __init__(self, wl: Workload, cfg: SimConfig, runtime) -> None:
        self.wl, self.cfg, self.rt = wl, cfg, runtime
        c = cfg.cluster
        host = c.host_gb * 1e9 if runtime.host_cache else 0.0
        future = runtime.eviction.needs_future  # an offline policy (Belady): give it the future
        self.workers = [Worker(j, c.gpu_model_gb * 1e9, host, c.disk_gb * 1e9, future=future)
                        for j in range(c.gpus)]
        self.oracle = NextUseOracle(wl) if future else None
        self.cur_req = -1  # the request being started (the oracle's "now")
        self.heap: list[tuple] = []
        self.seq = 0
        self.now = 0.0
        self.rnd = random.Random(cfg.seed)  # routing randomness: seeded, cheap per call
        self.holders: list[set[int]] = [set() for _ in range(wl.n_base)]  # base -> workers with it on GPU
        self.key_size = wl.key_size.tolist()
        self.key_kind = wl.key_kind.tolist()
        self.pool = {k: v.tolist() for k, v in wl.load_pool.items()}
        self.pool_pos = {k: 0 for k in wl.load_pool}
        self.pcie = c.pcie_gbps * 1e9
        self.disk_bw = c.disk_gbps * 1e9
        self.remote_bw = c.remote_gbps * 1e9
        self.gentd26 = c.load_model == "gentd26"
        n = len(wl)
        self.rec = Records(np.full(n, np.nan), np.full(n, np.nan), np.zeros(n), np.full(n, -1, np.int32),
                           np.zeros(n, np.int16), np.zeros(n, np.int8), {k: 0.0 for k in (0, 1, 2)},
                           {k: 0 for k in (0, 1, 2)})
        self.infer = wl.infer_s
        self.in_system = 0  # requests arrived and not completed (Ray's "ongoing requests")
        self.arrived = 0  # requests arrived, as of the latest control tick
        self._infer_cum: np.ndarray | None = None
        self.track = None  # a PolicyRouter keeping a ClusterSnapshot current, or None
        self.watch = None  # called with a worker whose queue, job or GPU changed (router indexes)
        self.held: deque = deque()  # requests the router holds until a replica has room (Ray)

    # -- mechanism -----------------------------------------------------------------------------
    def push(self, t: float, prio: int, *payload) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, prio, self.seq, *payload))

    def remote_load_s(self, key: int) -> float:
        kind = self.key_kind[key]
        if not self.gentd26:
            return self.key_size[key] / self.remote_bw
        pool = self.pool[kind]
        p = self.pool_pos[kind]
        self.pool_pos[kind] = p + 1 if p + 1 < len(pool) else 0
        return pool[p]

    def bring(self, w: Worker, key: int, now: float, protect: tuple, uses: int = 1) -> float:
        """Load ``key`` onto ``w``'s GPU (evicting through the policy); returns the seconds.
        ``uses``: 1 for a demand load (it serves an access, as CacheView counts), 0 for a prefetch."""
        size, kind = self.key_size[key], self.key_kind[key]
        rt = self.rt
        need_base = kind == BASE
        victims = None
        if size > w.free_bytes or (need_base and rt.max_base is not None and w.n_base >= rt.max_base):
            if self.oracle is not None:
                self.oracle.refresh(w, self.cur_req)
            victims = w.victims(rt.eviction, now, size, need_base, rt.max_base, protect)
            if victims is not None:
                for v in victims:
                    self.evict(w, v)
        host, disk = w.host, w.disk
        gone_h = gone_d = ()  # keys the host / disk tier dropped to make room
        if host is not None and key in host.items:
            t = size / self.pcie
            host.items.move_to_end(key)
        elif disk is not None and key in disk.items:
            t = size / self.disk_bw + size / self.pcie
            disk.items.move_to_end(key)
            if host is not None:
                gone_h = host.touch_or_add(key, size)
        else:
            t = self.remote_load_s(key)
            if disk is not None:
                gone_d = disk.touch_or_add(key, size)
            if host is not None:
                gone_h = host.touch_or_add(key, size)
        if size <= w.free_bytes and not (need_base and rt.max_base is not None and w.n_base >= rt.max_base):
            w.insert(key, kind, size, self.wl.mean_load_s[kind], now, uses)
            if need_base:
                self.holders[key].add(w.idx)
        # else: it did not fit even after eviction: streamed for this request only, not kept
        if self.track is not None:
            self.track.keys(w, [key, *(victims or ()), *gone_h, *gone_d])
        self.rec.load_by_kind[kind] += t
        self.rec.loads_by_kind[kind] += 1
        return t

    def evict(self, w: Worker, key: int) -> None:
        w.remove(key)
        if self.key_kind[key] == BASE:
            self.holders[key].discard(w.idx)

    def start(self, w: Worker, i: int, comps: list, now: float) -> None:
        """Begin request ``i`` on idle worker ``w``: loads of what it lacks, then compute."""
        w.clock += 1
        clock = w.clock
        load = 0.0
        missed = 0
        slot_of, uses, last_seq, last_time = w.slot_of, w.uses, w.last_seq, w.last_time
        protect = tuple(comps)
        self.cur_req = i
        for k in comps:
            s = slot_of.get(k)
            if s is None:
                load += self.bring(w, k, now, protect)
                missed += 1
                # a load may have grown the worker's arrays: take them afresh
                uses, last_seq, last_time = w.uses, w.last_seq, w.last_time
            else:
                uses[s] += 1
                last_seq[s] = clock
                last_time[s] = now
        if self.oracle is not None:  # record each component's next use, for Belady
            nxt, off = self.oracle.next_at, int(self.wl.comp_offsets[i])
            for j, k in enumerate(comps):
                s = slot_of.get(k)
                if s is not None:
                    w.next_seq[s] = nxt[off + j]
        dur = load + self.infer[i]
        rec = self.rec
        rec.start[i] = now
        rec.load_s[i] = load
        rec.worker[i] = w.idx
        rec.misses[i] = missed
        self._occupy(w, now, dur)
        self.push(now + dur, FINISH, w.idx, i)
        if self.watch is not None:
            self.watch(w)

    def start_prefetch(self, w: Worker, keys: list[int], now: float) -> None:
        """An idle worker loads ``keys`` ahead of demand (a job like any other: it is busy)."""
        w.clock += 1
        dur = 0.0
        for k in keys:
            if k not in w.slot_of:
                dur += self.bring(w, k, now, tuple(keys), uses=0)
                self.rec.prefetch_loads += 1
        if dur <= 0.0:
            return
        self.rec.prefetch_s += dur
        self._occupy(w, now, dur)
        self.push(now + dur, FINISH, w.idx, -1)
        if self.watch is not None:
            self.watch(w)

    def _occupy(self, w: Worker, now: float, dur: float) -> None:
        w.idle_s += now - w.free_since
        w.busy = True
        w.busy_s += dur
        w.ready_at = now + dur

    def enqueue(self, w: Worker, i: int, comps: list, now: float) -> None:
        if w.busy:
            w.queue.append((i, comps))
            if self.watch is not None:
                self.watch(w)
        else:
            self.start(w, i, comps, now)

    def dispatch_held(self, w: Worker, now: float) -> None:
        """Re-route held requests, oldest first, while ``w`` (which just freed a place or became
        ready) has room; one the router still cannot place goes to ``w``, which has room."""
        cap = self.rt.router.max_ongoing
        held, route = self.held, self.rt.route
        while held and len(w.queue) + w.busy < cap:
            j, comps = held.popleft()
            self.enqueue(route(j, comps, now) or w, j, comps, now)

    def mean_job_s(self) -> float:
        """Mean seconds a worker spends per request so far (compute + loads), for autoscalers."""
        if not len(self.infer):
            return 0.0
        n = min(max(self.arrived, 1), len(self.infer))
        if self._infer_cum is None:  # prefix sums: a mean over 500k samples per tick added up
            self._infer_cum = np.cumsum(self.infer)
        return float(self._infer_cum[n - 1]) / n + sum(self.rec.load_by_kind.values()) / n

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> Records:
        wl, rt, heap = self.wl, self.rt, self.heap
        workers = self.workers
        n = len(wl)
        arrival = wl.arrival
        rt.attach(self)
        if rt.tick_s and n:
            self.push(float(arrival[0]), TICK)
        route = rt.route
        pop = heapq.heappop
        rec = self.rec
        held = self.held
        watch = self.watch  # set by a router that indexes worker state
        i = 0
        chunk_end = 0
        times: list[float] = []
        ck: list[int] = []
        co: list[int] = []
        base0 = 0
        last_finish = 0.0
        while True:
            if i < n:
                if i == chunk_end:  # refill the Python-list window over the next requests
                    chunk_end = min(n, i + _CHUNK)
                    base0 = i
                    times = arrival[i:chunk_end].tolist()
                    lo, hi = wl.comp_offsets[i], wl.comp_offsets[chunk_end]
                    ck = wl.comp_key[lo:hi].tolist()
                    co = (wl.comp_offsets[i:chunk_end + 1] - lo).tolist()
                ta = times[i - base0]
                if not heap or ta < heap[0][0] or (ta == heap[0][0] and ARRIVAL < heap[0][1]):
                    self.now = ta
                    j = i - base0
                    comps = ck[co[j]:co[j + 1]]
                    self.in_system += 1
                    # Held requests mean every replica is full (each freed place re-dispatches
                    # them at once), so a new arrival queues behind them without routing.
                    w = None if held else route(i, comps, ta)
                    if w is None:  # the router holds it until a replica has room (Ray)
                        held.append((i, comps))
                    elif w.busy:
                        w.queue.append((i, comps))
                        if watch is not None:
                            watch(w)
                    else:
                        self.start(w, i, comps, ta)
                    i += 1
                    continue
            elif not heap:
                break
            ev = pop(heap)
            now = self.now = ev[0]
            prio = ev[1]
            if prio == FINISH:
                last_finish = now
                w = workers[ev[3]]
                if ev[4] >= 0:
                    self.in_system -= 1
                    rec.finish[ev[4]] = now
                    rec.completions[ev[4]] += 1
                w.busy = False
                w.free_since = now
                if w.queue:
                    j, comps = w.queue.popleft()
                    self.start(w, j, comps, now)
                if held and w.active:
                    self.dispatch_held(w, now)
                if not w.busy:
                    rt.on_idle(w, now)
                if watch is not None:
                    watch(w)
            elif prio == READY:
                rt.on_ready(workers[ev[3]], now)
                if held:
                    self.dispatch_held(workers[ev[3]], now)
            elif prio == TICK:
                self.arrived = i
                rt.on_tick(now)
                if i < n or held or any(w.busy or w.queue for w in workers):
                    self.push(now + rt.tick_s, TICK)
        # the makespan ends at the last completion (a trailing control tick does not extend it)
        end = max(last_finish, float(arrival[-1]) if n else 0.0)
        for w in workers:
            if not w.busy:
                w.idle_s += end - w.free_since
                w.free_since = end
        rec.makespan = end  # arrivals were shifted so the first is at 0, where workers start free
        rec.busy_s = np.array([w.busy_s for w in workers])
        rec.idle_s = np.array([w.idle_s for w in workers])
        return rec
