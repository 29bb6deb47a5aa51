"""The discrete-event loop: arrivals, jobs on workers, loads through the tiers, control ticks.

One worker runs one job at a time (ControlNet and adapter diversity defeat batching in production),
FIFO from its own queue. A request's job loads the components its GPU lacks (summed, one loader
per worker), then computes; the worker is busy for both. Load and service times were sampled up
front (``workload.py``); the loop only indexes, which is what keeps it near 20 us per request.
Metrics are not computed here: the loop fills per-request arrays and ``metrics.py`` reduces them.

Routers, placement and autoscalers see only what a live replica could report: queue lengths, the
running job's elapsed time and its expected duration (the profile's mean compute plus the
expected load of what it is loading, by tier: ``tier_costs``), queued jobs' expected compute, and
completed jobs' durations. The sampled durations (jitter, remote-load draws) drive the clock only.
Each worker keeps ``exp_end`` (start + expected duration of its running job), ``exp_floor`` and
``exp_queue`` (sum of its queued jobs' expected compute), kept current in O(1) per event;
``remaining_s`` turns them into an expected drain time.
With ``ClusterSpec.compute_slots`` k, at most k request jobs run per host at once; a worker whose
request finds them taken is busy to the router and waits first come first served on its host. The
slot covers the job's loads and compute here; live (``deployments/compute_slots.py``) only the
compute, loads (a small share of a job on the demo) run before it.
Policies come from a ``PolicyRuntime`` (``policy_sets.py``): a router, an eviction policy from the
``policies.eviction`` registry, optional control (autoscaling, placement, prefetch) on ticks.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from policies.drain import drain_s, late_floor
from policies.eviction import is_stateful
from policies.load_ahead import keep, may_load_ahead
from policies.snapshot import DISK, HOST, LORA, REMOTE
from trace_replay.simulator.config import SimConfig
from trace_replay.simulator.events import ARRIVAL, FINISH, READY, TICK
from trace_replay.simulator.oracle import NextUseOracle
from trace_replay.simulator.worker import Worker
from trace_replay.simulator.workload import BASE, Workload

_CHUNK = 1 << 15  # requests converted to Python lists at a time (bounded memory at 3.5M)


def tier_costs(wl: Workload, cfg: SimConfig) -> np.ndarray:
    """(n_keys, 4) expected seconds to bring each component to the GPU from tier GPU (0), host (1),
    disk (2), remote (3): size over the tier bandwidths plus the kind's reload overhead; remote is
    the mean of the sampled distribution (GenTD26, end to end) or overhead + size / remote_gbps.
    Host and disk loads are deterministic, so for them expected = charged.

    From the host tier a base model or ControlNet pays only the copy: the host tier keeps the built
    module and moves its weights (deployments/model_cache.py), so the overhead of building it from
    files is not paid again (H200: a 2.13 GB pipeline from pinned host memory in 0.043 s against a
    warm ``load_pipeline`` of 1.38 s, ../shared/data/gpu). A LoRA still pays its overhead there:
    that is the slot swap (``lora_swap``; ``lora`` when unset), which every tier below the GPU
    needs; from the tiers below, the LoRA pays its whole overhead (read, fetch and swap)."""
    c = cfg.cluster
    oh = cfg.components.reload_overhead_s
    over = np.array([oh.controlnet, oh.lora, oh.base_model])[wl.key_kind]  # kind codes 0, 1, 2
    swap = oh.lora if oh.lora_swap is None else oh.lora_swap
    size = wl.key_size
    cost = np.zeros((wl.n_keys, 4))
    cost[:, 1] = size / (c.pcie_gbps * 1e9) + np.where(wl.key_kind == LORA, swap, 0.0)
    cost[:, 2] = size / (c.disk_gbps * 1e9) + size / (c.pcie_gbps * 1e9) + over
    if c.load_model == "bandwidth":
        cost[:, 3] = size / (c.remote_gbps * 1e9) + over
    else:
        cost[:, 3] = np.array([wl.mean_load_s[k] for k in range(3)])[wl.key_kind]
    return cost


def remaining_s(w: Worker, now: float) -> float:
    """Expected seconds until ``w`` drains its running and queued jobs (what it could report;
    ``policies.drain``, as a live replica reports it)."""
    return drain_s(now, w.exp_end if w.busy else None, w.exp_floor, w.exp_queue)


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
    ahead_loads: int = 0  # loads a queued request started while it waited (policies.load_ahead)
    ahead_wasted: int = 0  # of those, evicted before their request started
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
        ev, gpu = runtime.eviction, c.gpu_model_gb * 1e9
        # a policy that remembers: one memory per GPU cache, over its byte budget
        self.workers = [Worker(j, gpu, host, c.disk_gb * 1e9, future=future,
                               memory=ev.new_memory(gpu) if is_stateful(ev) else None)
                        for j in range(c.gpus)]
        self.oracle = NextUseOracle(wl) if future else None
        self.cur_req = -1  # the request being started (the oracle's "now")
        self.heap: list[tuple] = []
        self.seq = 0
        self.now = 0.0
        self.rnd = random.Random(cfg.seed)  # routing randomness: seeded, cheap per call
        self.holders: list[set[int]] = [set() for _ in range(wl.n_base)]  # base -> workers with it on GPU
        # Replicas sharing a host's processors: a job starting while m of the host's replicas are
        # busy, itself included, takes stretch[m] times as long (the busy count is what the host
        # could observe): 1 + host_contention x (m - 1), or the profile's measured host_stretch.
        self.per_host = c.replicas_per_host
        self.stretch = c.stretch_by_busy()
        # one past the host's replicas: a load ahead starts on a busy replica, counted again
        self.stretch.append(2 * self.stretch[-1] - self.stretch[-2])
        self.contention = any(x != 1.0 for x in self.stretch)
        self.host_busy = [0] * (c.gpus // c.replicas_per_host + 1)
        # compute slots: at most compute_slots requests run per host; a replica whose request
        # finds them taken holds it (busy to the router) in its host's first-come queue
        self.compute_slots = c.compute_slots
        self.host_computing = [0] * len(self.host_busy)
        self.slot_queue: list[deque] = [deque() for _ in self.host_busy]
        # contention_model "shared": the stretch follows the busy count as it changes (a job
        # that started alone slows when neighbours start, and speeds up when they finish)
        self.shared = self.contention and self.per_host > 1 and c.contention_model == "shared"
        if self.shared:
            self.work = [0.0] * c.gpus  # uncontended seconds left of each worker's job, at work_t
            self.work_t = [0.0] * c.gpus
            self.fin_t = [-1.0] * c.gpus  # its FINISH event's time (-1: none); older ones are stale
            self.job = [-1] * c.gpus  # its request (-1: a prefetch)
            self.credit_end = [0.0] * c.gpus  # the end busy_s was credited with at its start
            self.host_jobs: list[list[int]] = [[] for _ in self.host_busy]
        self.key_size = wl.key_size.tolist()
        self.key_kind = wl.key_kind.tolist()
        self.pool = {k: v.tolist() for k, v in wl.load_pool.items()}
        self.pool_pos = {k: 0 for k in wl.load_pool}
        self.pcie = c.pcie_gbps * 1e9
        self.disk_bw = c.disk_gbps * 1e9
        self.gentd26 = c.load_model == "gentd26"
        self.tier_cost = tier_costs(wl, cfg)  # expected seconds by key and tier (policies plan with it)
        self.cost_host, self.cost_disk, self.cost_remote = (self.tier_cost[:, j].tolist() for j in (1, 2, 3))
        self._exp_load = 0.0  # expected seconds of the loads of the job being started
        # expected compute per request (profile mean); NaN: trace exec seconds, learnt as they complete
        inf = cfg.inference  # the profile's request at its defaults: the guess before any evidence
        self.exec_prior = (inf.fixed_s + inf.ref_runtime_s * inf.default_steps / inf.ref_steps
                           * inf.default_pixels / inf.ref_pixels)
        exp = wl.expect_infer_s
        self.exp_infer = exp.tolist() if exp is not None else [self.exec_prior] * len(wl)
        self.exec_sum, self.exec_n = 0.0, 0  # completed requests whose expectation is learnt
        self.done_busy_s, self.done_n = 0.0, 0  # completed jobs' seconds, completed requests
        n = len(wl)
        self.rec = Records(np.full(n, np.nan), np.full(n, np.nan), np.zeros(n), np.full(n, -1, np.int32),
                           np.zeros(n, np.int16), np.zeros(n, np.int8), {k: 0.0 for k in (0, 1, 2)},
                           {k: 0 for k in (0, 1, 2)})
        self.infer = wl.infer_s
        self.in_system = 0  # requests arrived and not completed (Ray's "ongoing requests")
        self.arrived = 0  # requests arrived, as of the latest control tick
        self._expect_cum: np.ndarray | None = None
        self.track = None  # a PolicyRouter keeping a ClusterSnapshot current, or None
        self.watch = None  # called with a worker whose queue, job or GPU changed (router indexes)
        self.held: deque = deque()  # requests the router holds until a replica has room (Ray)
        self.load_ahead = bool(getattr(runtime, "load_ahead", False))
        self.ahead_tiers = getattr(runtime, "ahead_tiers", frozenset({HOST, DISK, REMOTE}))

    # -- mechanism -----------------------------------------------------------------------------
    def push(self, t: float, prio: int, *payload) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, prio, self.seq, *payload))

    def remote_load_s(self, key: int) -> float:
        if not self.gentd26:
            return self.cost_remote[key]  # overhead + size / remote_gbps
        kind = self.key_kind[key]
        pool = self.pool[kind]
        p = self.pool_pos[kind]
        self.pool_pos[kind] = p + 1 if p + 1 < len(pool) else 0
        return pool[p]

    def bring(self, w: Worker, key: int, now: float, protect: tuple, uses: int = 1, spare: tuple = ()) -> float:
        """Load ``key`` onto ``w``'s GPU (evicting through the policy); returns the seconds.
        ``uses``: 1 for a demand load (it serves an access, as CacheView counts), 0 for a prefetch.
        ``spare``: keys evicted only when nothing else makes room (what queued requests need)."""
        size, kind = self.key_size[key], self.key_kind[key]
        rt = self.rt
        need_base = kind == BASE
        victims = None
        if uses and w.memory is not None:  # a demand miss, reported before its evictions
            w.memory.on_miss(key, now)
        if w.lacks_room(size, need_base, rt.max_base):
            if self.oracle is not None:
                self.oracle.refresh(w, self.cur_req)
            victims = None
            if spare:
                victims = w.victims(rt.eviction, now, size, need_base, rt.max_base, protect + spare)
            if victims is None:
                victims = w.victims(rt.eviction, now, size, need_base, rt.max_base, protect)
            if victims is not None:
                for v in victims:
                    self.evict(w, v, now)
        host, disk = w.host, w.disk
        gone_h = gone_d = ()  # keys the host / disk tier dropped to make room
        if host is not None and key in host.items:
            t = self.cost_host[key]
            self._exp_load += t
            host.items.move_to_end(key)
        elif disk is not None and key in disk.items:
            t = self.cost_disk[key]
            self._exp_load += t
            disk.items.move_to_end(key)
            if host is not None:
                gone_h = host.touch_or_add(key, size)
        else:
            t = self.remote_load_s(key)
            self._exp_load += self.cost_remote[key]
            if disk is not None:
                gone_d = disk.touch_or_add(key, size)
            if host is not None:
                gone_h = host.touch_or_add(key, size)
        if not w.lacks_room(size, need_base, rt.max_base):
            w.insert(key, kind, size, self.cost_remote[key], now, uses)
            if need_base:
                self.holders[key].add(w.idx)
        # else: it did not fit even after eviction: streamed for this request only, not kept
        if self.track is not None:
            self.track.keys(w, [key, *(victims or ()), *gone_h, *gone_d])
        if self.contention:  # a load on a shared host slows down with its busy neighbours, as compute does
            t *= self.stretch[self.host_busy[w.idx // self.per_host] + 1]
        self.rec.load_by_kind[kind] += t
        self.rec.loads_by_kind[kind] += 1
        return t

    def evict(self, w: Worker, key: int, now: float) -> None:
        w.remove(key, now)
        if self.key_kind[key] == BASE:
            self.holders[key].discard(w.idx)

    def start(self, w: Worker, i: int, comps: list, now: float) -> None:
        """Begin request ``i`` on idle worker ``w``: loads of what it lacks, then compute (with
        compute slots, once its host has one free)."""
        if self.compute_slots:
            h = w.idx // self.per_host
            if self.host_computing[h] >= self.compute_slots:
                w.busy = True  # its request waits for a slot (Worker.idle_s counts the wait)
                e = self.expect(i)
                w.exp_end, w.exp_floor = now + e, late_floor(e)
                self.slot_queue[h].append((w, i, comps))
                if self.watch is not None:
                    self.watch(w)
                return
            self.host_computing[h] += 1
        w.clock += 1
        clock = w.clock
        load = 0.0
        missed = 0
        slot_of, uses, last_seq, last_time = w.slot_of, w.uses, w.last_seq, w.last_time
        memory = w.memory  # a stateful policy's: told of every hit
        protect = tuple(comps)
        self.cur_req = i
        self._exp_load = 0.0
        ahead = w.ahead
        spare = None  # load ahead: what the requests queued behind need is evicted last (on a miss)
        w.running = comps
        for k in comps:
            s = slot_of.get(k)
            if s is None:
                if spare is None:
                    spare = tuple(keep(c for _, c, _ in w.queue)) if self.load_ahead and w.queue else ()
                load += self.bring(w, k, now, protect, spare=spare)
                missed += 1
                # a load may have grown the worker's arrays: take them afresh
                uses, last_seq, last_time = w.uses, w.last_seq, w.last_time
            elif ahead and k in ahead:  # loaded ahead while queued: its miss, the load's remainder
                load += max(0.0, ahead.pop(k) - now)
                missed += 1
                last_seq[s] = clock
                last_time[s] = now
            else:
                uses[s] += 1
                last_seq[s] = clock
                last_time[s] = now
                if memory is not None:
                    memory.on_hit(k, now)
        if self.oracle is not None:  # record each component's next use, for Belady
            nxt, off = self.oracle.next_at, int(self.wl.comp_offsets[i])
            for j, k in enumerate(comps):
                s = slot_of.get(k)
                if s is not None:
                    w.next_seq[s] = nxt[off + j]
        infer = self.infer[i]
        if self.contention:  # (its loads were slowed alike in bring)
            infer *= self.stretch[self.host_busy[w.idx // self.per_host] + 1]
        dur = load + infer
        rec = self.rec
        rec.start[i] = now
        rec.load_s[i] = load
        rec.worker[i] = w.idx
        rec.misses[i] = missed
        self._occupy(w, now, dur, self._exp_load + self.expect(i))
        if self.shared:
            self._join(w, now, dur, i)
        else:
            self.push(now + dur, FINISH, w.idx, i)
        if self.watch is not None:
            self.watch(w)

    def _free_slot(self, h: int, now: float) -> None:
        """A request on host ``h`` finished: its slot goes to the longest waiting one there."""
        self.host_computing[h] -= 1
        if self.slot_queue[h]:
            w, i, comps = self.slot_queue[h].popleft()
            w.busy = False
            self.start(w, i, comps, now)  # which tells the router's index (watch)

    def start_prefetch(self, w: Worker, keys: list[int], now: float) -> float:
        """An idle worker loads ``keys`` ahead of demand (a job like any other: it is busy);
        returns the seconds of loading it began."""
        w.clock += 1
        dur = 0.0
        self._exp_load = 0.0
        w.running = keys
        for k in keys:
            if k not in w.slot_of:
                dur += self.bring(w, k, now, tuple(keys), uses=0)
                self.rec.prefetch_loads += 1
        if dur <= 0.0:
            return 0.0
        self.rec.prefetch_s += dur
        self._occupy(w, now, dur, self._exp_load)
        if self.shared:
            self._join(w, now, dur, -1)
        else:
            self.push(now + dur, FINISH, w.idx, -1)
        if self.watch is not None:
            self.watch(w)
        return dur

    def _occupy(self, w: Worker, now: float, dur: float, expected: float) -> None:
        """``w`` runs a job of ``dur`` seconds (the clock's) that it expects to take ``expected``."""
        w.idle_s += now - w.free_since
        w.busy = True
        self.host_busy[w.idx // self.per_host] += 1
        w.busy_s += dur
        w.job_start = now
        w.exp_end = now + expected
        w.exp_floor = late_floor(expected)

    # -- contention_model "shared": each running job on a host progresses at 1 / stretch[m]
    # of its uncontended speed while m of the host's replicas are busy
    def _progress(self, jobs: list[int], now: float) -> None:
        if jobs:
            rate = 1.0 / self.stretch[len(jobs)]
            work, work_t = self.work, self.work_t
            for x in jobs:
                work[x] -= (now - work_t[x]) * rate
                work_t[x] = now

    def _reschedule(self, jobs: list[int], now: float) -> None:
        stretch = self.stretch[len(jobs)]
        for x in jobs:
            fin = now + max(self.work[x], 0.0) * stretch
            if fin != self.fin_t[x]:
                self.fin_t[x] = fin
                self.push(fin, FINISH, x, self.job[x])

    def _join(self, w: Worker, now: float, dur: float, job: int) -> None:
        """``w`` (just occupied) starts a job of ``dur`` seconds as stretched at its start by the
        busy neighbours then (its loads in bring, its compute in start: one factor), which is
        also what busy_s was credited with; from now on it runs shared."""
        h = w.idx // self.per_host
        jobs = self.host_jobs[h]
        self._progress(jobs, now)
        x = w.idx
        work = dur / self.stretch[self.host_busy[h]]  # the uncontended seconds
        self.work[x], self.work_t[x], self.job[x], self.fin_t[x] = work, now, job, -1.0
        self.credit_end[x] = now + dur
        jobs.append(x)
        self._reschedule(jobs, now)

    def _leave(self, w: Worker, now: float) -> None:
        """``w``'s job ended: its neighbours speed up; busy_s gets the job's true length."""
        jobs = self.host_jobs[w.idx // self.per_host]
        self._progress(jobs, now)
        jobs.remove(w.idx)
        self.fin_t[w.idx] = -1.0
        w.busy_s += now - self.credit_end[w.idx]
        self._reschedule(jobs, now)

    def expect(self, i: int) -> float:
        """Expected compute seconds of request ``i``: the profile's mean, or for trace exec seconds
        the mean of the completed ones so far (the profile's mean before any completes)."""
        e = self.exp_infer[i]
        if e != e:  # NaN
            e = self.exec_sum / self.exec_n if self.exec_n else self.exec_prior
        return e

    def queue_job(self, w: Worker, i: int, comps: list) -> None:
        """Append request ``i`` to busy ``w``'s queue with the compute it is expected to need
        (first loading ahead what it lacks, when the policy set does)."""
        if self.load_ahead:
            self._load_ahead(w, comps, self.now)
        e = self.expect(i)
        w.exp_queue += e
        w.queue.append((i, comps, e))

    def _load_ahead(self, w: Worker, comps: list, now: float) -> None:
        """A request queued on busy ``w`` starts loading what it lacks (policies.load_ahead, as the
        live replica does): only when every request before it has its keys on the GPU or loading
        (a load inserts its key when it starts), into room that no other request there needs.
        Only from the policy set's tiers (ahead_tiers: on a GPU not the local disk; measured
        there, a page-cached read beside a generation slowed both, benchmarks/load_overlap.py). The load runs
        beside the worker's job; it does not slow the host's other work (a host-tier copy on an
        H200 left the generation at x1.02; the CPU demo's loads do contend, left out here).
        The request's start pays what is left of it."""
        slot_of = w.slot_of
        missing = [k for k in comps if k not in slot_of]
        if not missing:
            return
        earlier = [w.running, *(c for _, c, _ in w.queue)]
        if not may_load_ahead(earlier, slot_of.__contains__):
            return
        protect = tuple(keep(earlier) | set(comps))
        rt = self.rt
        tiers = self.ahead_tiers
        for k in missing:
            if k in slot_of:  # named twice, and loaded ahead for its first mention
                continue
            if w.tier_of(k) not in tiers:  # (policies.load_ahead.ahead_tiers) it loads at its start
                continue
            size, need_base = self.key_size[k], self.key_kind[k] == BASE
            # asked here before bring asks again: bring reports the miss to a stateful memory
            # first (which may adapt on it), and a load ahead without room must report nothing
            if (w.lacks_room(size, need_base, rt.max_base)
                    and w.victims(rt.eviction, now, size, need_base, rt.max_base, protect) is None):
                continue  # no room it may take: the request loads at its start
            t = self.bring(w, k, now, protect)
            if k in slot_of:  # kept (a key too big to keep streams at its start instead)
                w.ahead[k] = now + t
                self.rec.ahead_loads += 1

    def enqueue(self, w: Worker, i: int, comps: list, now: float) -> None:
        if w.busy:
            self.queue_job(w, i, comps)
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
        """Mean seconds a worker spent per completed request (its compute and loads, prefetches
        included), for autoscalers and placement; before any completes, the expected compute of
        the requests arrived so far (known at arrival, from the profile)."""
        if self.done_n:
            return self.done_busy_s / self.done_n
        if not len(self.infer):
            return 0.0
        n = min(max(self.arrived, 1), len(self.infer))
        if self._expect_cum is None:  # prefix sums: a mean over 500k values per tick added up
            exp = np.array(self.exp_infer)
            self._expect_cum = np.cumsum(np.where(np.isnan(exp), self.exec_prior, exp))
        return float(self._expect_cum[n - 1]) / n

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
        exp_infer = self.exp_infer
        shared = self.shared
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
                        self.queue_job(w, i, comps)
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
                w = workers[ev[3]]
                if shared:
                    if now != self.fin_t[w.idx]:
                        continue  # superseded: its neighbours changed how fast it runs
                    self._leave(w, now)
                last_finish = now
                j = ev[4]
                self.done_busy_s += now - w.job_start
                if j >= 0:
                    self.in_system -= 1
                    self.done_n += 1
                    rec.finish[j] = now
                    rec.completions[j] += 1
                    if exp_infer[j] != exp_infer[j]:  # trace exec seconds: now observed
                        self.exec_sum += self.infer[j]
                        self.exec_n += 1
                w.busy = False
                h = w.idx // self.per_host
                self.host_busy[h] -= 1
                w.free_since = now
                if j >= 0 and self.compute_slots:
                    self._free_slot(h, now)
                if w.queue:
                    j, comps, e = w.queue.popleft()
                    w.exp_queue = w.exp_queue - e if w.queue else 0.0  # no drift left behind
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
        rec.ahead_wasted = sum(w.ahead_wasted for w in workers)
        rec.idle_s = np.array([w.idle_s for w in workers])
        return rec
