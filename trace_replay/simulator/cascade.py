"""Discrete-event simulation of a light -> heavy model cascade on G GPUs (DiffServe's setting).

Model:
- Each GPU is one replica of one stage. A light replica runs SD-Turbo and then scores the batch
  with the discriminator (folded into the light profile); a heavy replica runs SD 1.5.
- Each stage has one FIFO queue. An idle replica takes up to the plan's batch cap of queued
  queries at once (it does not wait to fill a batch), and no more than keep every deadline in the
  batch (arrival + SLO) at the batch's latency; it is busy for the profile's latency at that
  batch size (linear between profiled sizes).
- When a light batch finishes, each query whose light confidence (its prompt's row of
  confidence_scores.csv) is below the cutoff in force goes to the heavy queue; the rest are
  answered by the light model. With the overload rule (ours) a query is deferred only if the
  heavy stage is expected to finish it within its SLO (`policies.cascade_planner.should_defer`,
  from queue length, replicas and profile means).
- A query that can no longer finish in time even in a batch of one when a replica would take it
  is dropped (every policy); a dropped or late query violates the SLO. Under the overload rule a
  deferred query already has its light image: if no heavy replica has taken it by its deadline
  minus a heavy batch's latency, the light image is answered then (an ingress-side timer).
- Re-allocation: a replica moving to the other stage finishes its batch, then loads the other
  model for `switch_s` and serves nothing meanwhile. Default 2.73 s: this project's engine's cold
  `load_pipeline` of SD 1.5 (2.13 GB) on an H200 (`../shared/data/gpu/README.md`); SD-Turbo's
  UNet is about as large. A plan using fewer GPUs than the cluster leaves the rest in their role.
- Events at one instant: batch and switch completions first (they free replicas), then the
  light-image timers, then the controller's tick, then arrivals in trace order; the heap's
  sequence number orders the rest.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from policies.cascade_planner import expected_heavy_wait_s, should_defer
from trace_replay.simulator.cascade_control import Controller, Plan
from trace_replay.simulator.cascade_inputs import DiffServeCascade, fid_estimate

SWITCH_S = 2.73
LIGHT, HEAVY = 0, 1
DONE, SWITCHED, EXPIRE, TICK = 0, 0, 1, 2  # event priorities at equal times (then arrivals)
K_DONE, K_SWITCHED, K_TICK, K_EXPIRE = 0, 1, 2, 3  # event kinds
DROPPED = -1
UNRESOLVED = -2  # answered_by of a query still in the system


@dataclass
class CascadeRun:
    """Per-query outcome arrays and the plan timeline of one simulation."""

    arrival: np.ndarray
    finish: np.ndarray  # NaN when dropped
    answered_by: np.ndarray  # LIGHT, HEAVY or DROPPED
    slo_s: float
    gpus: int
    policy: str
    timeline: list[tuple[float, Plan]] = field(default_factory=list)
    switches: int = 0
    busy_s: float = 0.0
    overload_answers: int = 0  # rejected by the discriminator, answered light by the overload rule
    switch_s: float = SWITCH_S  # seconds one stage switch keeps a GPU loading
    dropped_at: list[int] = field(default_factory=lambda: [0, 0])  # drops in the (light, heavy) queue

    def summary(self) -> dict[str, object]:
        n = self.arrival.size
        done = self.answered_by != DROPPED
        lat = (self.finish - self.arrival)[done]
        late = int(np.count_nonzero(lat > self.slo_s))
        dropped = int(n - done.sum())
        q = np.quantile(lat, [0.5, 0.95, 0.99]) if lat.size else np.full(3, np.nan)
        heavy = float(np.mean(self.answered_by[done] == HEAVY)) if done.any() else 0.0
        makespan = float(np.nanmax(self.finish)) if done.any() else 0.0
        times = np.array([t for t, _ in self.timeline] + [max(makespan, self.timeline[-1][0])])
        thr = np.array([p.threshold for _, p in self.timeline])
        span = np.diff(times)
        return {
            "policy_set": self.policy, "gpus": self.gpus, "requests": n, "completed": int(done.sum()),
            "dropped": dropped, "dropped_light_queue": self.dropped_at[0], "dropped_heavy_queue": self.dropped_at[1],
            "late": late, "slo_s": self.slo_s,
            "slo_violations": late + dropped, "slo_violation_rate": (late + dropped) / n if n else 0.0,
            "latency_mean_s": float(lat.mean()) if lat.size else float("nan"),
            "latency_p50_s": float(q[0]), "latency_p95_s": float(q[1]), "latency_p99_s": float(q[2]),
            "heavy_share": heavy, "fid_estimate": fid_estimate(1.0 - heavy),
            "overload_light_answers": self.overload_answers,
            "replans": len(self.timeline) - 1, "stage_switches": self.switches,
            "loads": self.switches, "load_seconds": self.switch_s * self.switches,
            "threshold_mean": float(np.sum(thr * span) / span.sum()) if span.sum() > 0 else float(thr[0]),
            "gpu_busy_seconds": self.busy_s, "makespan_s": makespan,
            "gpu_busy_fraction": self.busy_s / (self.gpus * makespan) if makespan > 0 else 0.0,
        }


class CascadeSim:
    """One run: `CascadeSim(...).run()`; see the module docstring for the model."""

    def __init__(self, arrival_s: np.ndarray, confidence: np.ndarray, cascade: DiffServeCascade, gpus: int,
                 controller: Controller, switch_s: float = SWITCH_S) -> None:
        arrival_s = np.asarray(arrival_s, dtype=np.float64)
        if arrival_s.size and np.any(np.diff(arrival_s) < 0):
            raise ValueError("arrival times must be sorted")
        if switch_s < 0:
            raise ValueError(f"switch_s must be >= 0; got {switch_s}")
        self.arr, self.conf, self.cascade, self.g = arrival_s, np.asarray(confidence, np.float64), cascade, gpus
        self.ctl, self.switch_s, self.slo = controller, switch_s, cascade.slo_s
        n = arrival_s.size
        self.out = CascadeRun(arrival_s, np.full(n, np.nan), np.full(n, UNRESOLVED, np.int8), self.slo, gpus,
                              controller.name)
        self.out.switch_s = switch_s
        self.queues = (deque(), deque())
        self.idle: tuple[deque, deque] = (deque(), deque())
        self.role = np.zeros(gpus, np.int8)  # the stage a replica serves (or is loading, when switching)
        self.pending = np.full(gpus, -1, np.int8)  # stage to switch to after the running batch
        self.switching = np.zeros(gpus, bool)
        self.busy_end = np.full(gpus, -np.inf)  # expected end of the running batch (profile mean)
        self.batch: list[list[int] | None] = [None] * gpus
        self.events: list[tuple[float, int, int, int, int]] = []
        self.seq = 0
        self.now = 0.0
        self.unresolved = n
        self.started = np.zeros(n, bool)  # taken by a heavy replica
        self.answered = [0, 0]  # answers by (light, heavy) since the controller's last tick

    # -- plan -----------------------------------------------------------------------------
    def _assigned(self) -> np.ndarray:
        return np.where(self.pending >= 0, self.pending, self.role)

    def _apply(self, plan: Plan, first: bool = False) -> None:
        self.plan = plan
        self.out.timeline.append((self.now, plan))
        if first:
            n_l = 0 if plan.direct_heavy else min(plan.light_replicas, self.g)
            self.role[:] = HEAVY
            self.role[:n_l] = LIGHT
            for r in range(self.g):
                self.idle[self.role[r]].append(r)
            return
        want_l = 0 if plan.direct_heavy else plan.light_replicas
        cur_l = int(np.count_nonzero(self._assigned() == LIGHT))
        if want_l > cur_l:
            self._move(HEAVY, LIGHT, want_l - cur_l)
        elif plan.heavy_replicas > self.g - cur_l:
            self._move(LIGHT, HEAVY, plan.heavy_replicas - (self.g - cur_l))

    def _move(self, src: int, dst: int, k: int) -> None:
        """Move k replicas assigned to src: idle ones first, then busy ones after their batch."""
        for r in list(self.idle[src])[:k]:
            self.idle[src].remove(r)
            self._start_switch(r, dst)
            k -= 1
        for r in np.flatnonzero(self._assigned() == src):
            if k <= 0:
                break
            # busy or mid-switch: switches when that ends; one already heading to src just stays
            self.pending[r] = -1 if self.role[r] == dst else dst
            k -= 1

    def _start_switch(self, r: int, dst: int) -> None:
        self.role[r], self.pending[r], self.switching[r] = dst, -1, True
        self.busy_end[r] = self.now + self.switch_s
        self.out.switches += 1
        self._push(self.now + self.switch_s, SWITCHED, K_SWITCHED, r)

    # -- events ---------------------------------------------------------------------------
    def _push(self, t: float, prio: int, kind: int, r: int) -> None:
        """r: the replica (K_DONE, K_SWITCHED), the query (K_EXPIRE) or -1 (K_TICK)."""
        self.seq += 1
        heapq.heappush(self.events, (t, prio, self.seq, kind, r))

    def _latency(self, stage: int, k: int) -> float:
        prof = self.cascade.light if stage == LIGHT else self.cascade.heavy
        return float(np.interp(k, prof.batch, prof.latency_s))

    def _resolve(self, i: int, by: int) -> None:
        self.out.answered_by[i] = by
        if by != DROPPED:
            self.out.finish[i] = self.now
            self.answered[by] += 1
        self.unresolved -= 1

    def _dispatch(self, stage: int) -> None:
        q, idle = self.queues[stage], self.idle[stage]
        cap = self.plan.light_batch if stage == LIGHT else max(self.plan.heavy_batch, 1)
        fastest = self._latency(stage, 1)
        while idle and q:
            take: list[int] = []
            due = np.inf  # the earliest deadline in the batch being formed
            while q and len(take) < cap:
                i = q[0]
                deadline = self.arr[i] + self.slo
                if self.out.answered_by[i] != UNRESOLVED:
                    q.popleft()  # answered from the light image while it waited (overload rule)
                elif self.now + fastest > deadline:
                    q.popleft()  # cannot finish in time: do not spend a GPU on it
                    if stage == HEAVY and self.plan.overload_rule and self.now <= deadline:
                        self.out.overload_answers += 1
                        self._resolve(i, LIGHT)  # its light image, still in time
                    else:
                        self._resolve(i, DROPPED)
                        self.out.dropped_at[stage] += 1
                elif self.now + self._latency(stage, len(take) + 1) <= min(due, deadline):
                    take.append(q.popleft())  # a larger batch still meets every deadline in it
                    due = min(due, deadline)
                else:
                    break  # the batch is as large as its deadlines allow; the next replica takes i
            if not take:
                break
            r = idle.popleft()
            dur = self._latency(stage, len(take))
            self.batch[r], self.busy_end[r] = take, self.now + dur
            if stage == HEAVY:
                self.started[take] = True  # the light-image timer no longer applies
            self.out.busy_s += dur
            self._push(self.now + dur, DONE, K_DONE, r)

    def _batch_done(self, r: int) -> None:
        take, self.batch[r], self.busy_end[r] = self.batch[r], None, -np.inf
        if self.role[r] == HEAVY:
            for i in take:
                self._resolve(i, HEAVY)
        else:
            self._light_done(take)
        if self.pending[r] >= 0:
            self._start_switch(r, int(self.pending[r]))
        else:
            self.idle[self.role[r]].append(r)

    def _light_done(self, take: list[int]) -> None:
        p = self.plan
        heavy_q = self.queues[HEAVY]
        if p.overload_rule:  # inputs of should_defer, as a live ingress would read them
            # replicas that will serve heavy batches: not leaving the stage, maybe still loading
            active = self._assigned() == HEAVY
            free_at = np.maximum(self.busy_end[active], self.now)  # idle: now; else expected end
            b_h = max(p.heavy_batch, 1)
            lat_h = self._latency(HEAVY, b_h)
        for i in take:
            c = self.conf[i]
            if p.overload_rule and c < p.cutoff:
                wait = expected_heavy_wait_s(self.now, free_at, len(heavy_q), b_h, lat_h)
                if not should_defer(c, p.cutoff, self.now, self.arr[i], self.slo, wait, lat_h):
                    self.out.overload_answers += 1
                    self._resolve(i, LIGHT)
                    continue
            if c < p.cutoff:
                heavy_q.append(i)
                if p.overload_rule:  # the light image is the answer if the heavy stage has not begun
                    self._push(self.arr[i] + self.slo - lat_h, EXPIRE, K_EXPIRE, i)
            else:
                self._resolve(i, LIGHT)

    def run(self) -> CascadeRun:
        self._apply(self.ctl.initial(), first=True)
        tick = self.ctl.tick_s
        if tick:
            self._push(tick, TICK, K_TICK, -1)
        n, a, counted = self.arr.size, 0, 0
        while a < n or self.events:
            # arrivals go after every event at the same instant (see the module docstring)
            if a < n and (not self.events or self.arr[a] < self.events[0][0]):
                self.now = float(self.arr[a])
                self.queues[HEAVY if self.plan.direct_heavy else LIGHT].append(a)
                a += 1
                self._dispatch(HEAVY if self.plan.direct_heavy else LIGHT)
                continue
            t, _, _, kind, r = heapq.heappop(self.events)
            self.now = t
            if kind == K_DONE:
                self._batch_done(r)
            elif kind == K_EXPIRE:
                if self.out.answered_by[r] == UNRESOLVED and not self.started[r]:
                    self.out.overload_answers += 1
                    self._resolve(r, LIGHT)
            elif kind == K_SWITCHED:
                self.switching[r], self.busy_end[r] = False, -np.inf
                if self.pending[r] >= 0:
                    self._start_switch(r, int(self.pending[r]))
                else:
                    self.idle[self.role[r]].append(r)
            else:
                queued = len(self.queues[LIGHT]) + len(self.queues[HEAVY])
                new = self.ctl.control(self.now, a - counted, queued, (self.answered[0], self.answered[1]))
                counted, self.answered = a, [0, 0]
                if new is not None:
                    self._apply(new)
                if self.unresolved > 0:
                    self._push(self.now + tick, TICK, K_TICK, -1)
            self._dispatch(LIGHT)
            self._dispatch(HEAVY)
            if (a >= n and self.unresolved > 0 and self.now > self.arr[-1] + self.slo
                    and all(k == K_TICK for *_, k, _ in self.events)):
                break  # what still waits has no replica of its stage and is past its deadline
        for stage in (LIGHT, HEAVY):
            while self.queues[stage]:
                self._resolve(self.queues[stage].popleft(), DROPPED)
        return self.out


def simulate_cascade(arrival_s: np.ndarray, prompts: np.ndarray, cascade: DiffServeCascade, gpus: int,
                     controller: Controller, switch_s: float = SWITCH_S) -> CascadeRun:
    """Replay arrivals (seconds) with their prompt indices through the cascade. DiffServe's files
    are not always in time order: queries are replayed sorted by arrival (stable), and the run's
    arrays follow that order."""
    order = np.argsort(np.asarray(arrival_s, dtype=np.float64), kind="stable")
    conf = cascade.prompt_confidence(np.asarray(prompts)[order])
    return CascadeSim(np.asarray(arrival_s, dtype=np.float64)[order], conf, cascade, gpus, controller, switch_s).run()
