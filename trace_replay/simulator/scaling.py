"""Autoscaling on control ticks through ``policies.autoscaling`` (pure policy code; the live
service does not run it yet).

A policy from the ``AUTOSCALING`` registry, wrapped in ``Guardrails`` (Ray's defaults unless the
set says otherwise), turns Ray's metric into a replica target; this class acts on it. Ray's
metric is running + queued requests averaged over a look-back window (30 s); the simulator keeps
the count in the loop (``Simulation.in_system``) and averages the samples taken at each tick.
The mean service time it passes (``Simulation.mean_job_s``) comes from completed jobs only.
Scaling up reserves inactive GPUs, routable after ``replica_startup_s`` with an empty GPU;
scaling down removes idle replicas only (Ray drains busy ones; simplification), chosen by a
``SCALE_DOWN`` policy (``newest-first`` as Ray, or ``cache-aware``), and clears their GPU.
"""

from __future__ import annotations

from collections import deque

from policies.autoscaling import AUTOSCALING, SCALE_DOWN, AutoscalingContext, Guardrails
from trace_replay.simulator.events import READY
from trace_replay.simulator.snapshots import snapshot


class Autoscaler:
    def __init__(self, policy: str, policy_args: dict, guardrails: dict, scale_down: str,
                 n_gpus: int, tick_s: float, look_back_s: float = 30.0) -> None:
        g = {"min_replicas": 1, "max_replicas": n_gpus, "upscale_delay_s": 30.0, "downscale_delay_s": 600.0,
             **guardrails}
        self.guard = Guardrails(**g)
        self.fn = self.guard(AUTOSCALING.create(policy, **policy_args))
        self.down = SCALE_DOWN.create(scale_down)
        self.samples: deque[float] = deque(maxlen=max(1, round(look_back_s / tick_s)) if tick_s else 1)
        self.state: dict = {}
        self.target = self.guard.min_replicas
        self.tick_s = tick_s
        self.last_arrivals = 0
        self.starting = 0
        # Ray's queue-length policy is a pure function of the averaged metric: once the window
        # holds one value, the target equals the current count and no move is pending, later
        # ticks with that same value decide the same, so they are skipped (172k ticks in a 20-day
        # trace at 10 s, most of them on an idle cluster)
        self.pure = policy == "ray-queue-length"
        self.same_run = 0
        self.last_x: float | None = None
        self.steady = False
        self.steady_x = 0.0

    def attach(self, sim, routable: list) -> None:
        self.sim, self.routable = sim, routable

    def on_tick(self, now: float) -> None:
        sim = self.sim
        x = float(sim.in_system)
        self.samples.append(x)
        self.same_run = self.same_run + 1 if x == self.last_x else 1
        self.last_x = x
        window_flat = self.same_run >= self.samples.maxlen
        if self.steady and window_flat and x == self.steady_x and self.starting == 0:
            self.last_arrivals = sim.arrived
            return
        arrived = sim.arrived
        rate = (arrived - self.last_arrivals) / self.tick_s
        self.last_arrivals = arrived
        ctx = AutoscalingContext(now, len(self.routable), self.target, sum(self.samples) / len(self.samples),
                                 rate, sim.mean_job_s(), self.state)
        self.target, self.state = self.fn(ctx)
        current = len(self.routable) + self.starting
        self.steady = (self.pure and window_flat and self.target == current
                       and not self.state.get("_guard", {}).get("dir"))
        self.steady_x = x
        if self.target > current:
            self._up(now, self.target - current)
        elif self.target < current:
            self._down(now, current - self.target)

    def _up(self, now: float, n: int) -> None:
        sim = self.sim
        for w in sim.workers:
            if n == 0:
                break
            if not w.active and not w.busy:
                w.active = True  # reserved now, routable when READY fires
                w.ready_at = now + sim.cfg.cluster.replica_startup_s
                self.starting += 1
                sim.push(w.ready_at, READY, w.idx)
                n -= 1

    def on_ready(self, w, now: float) -> None:
        self.starting -= 1
        self.routable.append(w)
        w.routable = True
        if self.sim.watch is not None:
            self.sim.watch(w)
        self.sim.rec.active_series.append((now, len(self.routable)))

    def _down(self, now: float, n: int) -> None:
        idle = [w for w in self.routable if not w.busy and not w.queue]
        n = min(n, len(idle), len(self.routable) - self.guard.min_replicas)
        if n <= 0:
            return
        sim = self.sim
        if self.down.name == "newest-first":  # cache-blind: no snapshot needed
            chosen = sorted(idle, key=lambda w: -w.idx)[:n]
        else:
            snap = snapshot(sim, now, [w.idx for w in idle])
            demand = self.demand(now)
            chosen = [idle[j] for j in self.down.choose(snap, demand, n).tolist()]
        for w in chosen:
            self.routable.remove(w)
            w.active = w.routable = False
            cleared = w.clear_gpu(now)
            for k in cleared:
                if sim.key_kind[k] == 2:
                    sim.holders[k].discard(w.idx)
            w.pinned, w.pin_mask = set(), None
            if sim.track is not None:
                sim.track.keys(w, cleared)
            if sim.watch is not None:
                sim.watch(w)
        sim.rec.active_series.append((now, len(self.routable)))
