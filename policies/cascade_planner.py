"""The cascade planner: when to re-solve the allocation MILP, for what demand, and a per-query
overload rule. Pure (numpy only); time comes in with every call.

DiffServe's controller (arXiv 2411.15381) re-solves every 5 s for the rate measured in the last
window. This planner differs in what it plans for and when:
- demand: two time-aware EWMAs of the arrival rate (fast and slow half-life); the planner takes
  the larger, so it rises as fast as the fast one and falls as slowly as the slow one, times
  `headroom` for Poisson bursts inside a period;
- backlog: queued work (queue delay x rate, Little's law) is added as the rate that drains it in
  `drain_s`, instead of shrinking the latency budget (which forces smaller, slower batches
  exactly when the system is behind);
- early re-solve: when the fast estimate leaves [planned / jump_ratio, planned x jump_ratio];
- hysteresis: a lower demand re-plans only when it fell by more than `down_band` (each stage
  switch is a model load), a higher one always;
- spare GPUs: the MILP uses the fewest GPUs for the best quality; the rest are spread over the
  stages in proportion to their load (shorter queues), not left idle;
- light stage: its batch cap is the largest within the latency budget, and it keeps the
  replicas the recent peak rate needs (a decaying maximum of the fast estimate,
  `light_hold_half_life_s`), taken from spare or surplus heavy replicas: a light GPU carries
  ~20 heavy GPUs' worth of queries, and one moved back to the light stage is a model load away,
  during which every query of a rising demand waits;
- quality of the mix, not of one window (optional `share_quality`): image-set quality such as FID
  depends on the share of images from the light model over many queries, and is not monotone in
  it (DiffServe's SD-Turbo -> SD 1.5 points: best at 40% light). Given quality as a function of
  light share, each solve ranks thresholds by the quality of the share the answers would reach
  (decayed counts of light and heavy answers so far, plus `share_half_life_s` more at f(t)): after a peak
  answered mostly by the light model, quieter periods defer more to bring the mix back;
- `should_defer`: per query, a rejected light image goes to the heavy stage only if the heavy
  queue can still meet its SLO; otherwise the light image is the answer (on time, lower quality);
- deferral beyond capacity (`defer_beyond_capacity`, for callers that apply `should_defer`):
  when the demand leaves the MILP short of the best-quality threshold, the light stage keeps the
  MILP's replicas (they carry every query), every other GPU serves the heavy stage, and the
  threshold in force is the best-quality one: the heavy stage never idles while a query worth
  deferring waits, and `should_defer` answers the overflow from the light model in time.
Everything comes from what a live system observes: arrival counts, queue delay, answers per
model, measured stage profiles; never future arrivals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from policies.cascade_allocation import (CascadeAllocator, CascadeDecision, CascadeInputs, MilpCascade, StageProfile,
                                         stage_latency, threshold_position)


@dataclass(frozen=True)
class PlannerConfig:
    """Round-number defaults, none fitted to one trace (on DiffServe's traces in the cascade
    simulator, headroom 1.0, 1.05, 1.1 and 1.15 gave the same violations within 0.03 points)."""

    period_s: float = 5.0  # re-solve cadence, as DiffServe's controller
    ewma_half_life_s: float = 10.0  # slow demand estimate: how long a drop takes to be believed
    fast_half_life_s: float = 1.0  # fast estimate: reacts to a rise within about a second
    headroom: float = 1.1  # plan for 10% over the estimate (Poisson noise at ~10 qps over 5 s is ~14%)
    jump_ratio: float = 1.3  # re-solve early when the fast estimate leaves planned x/÷ this
    min_interval_s: float = 1.0  # no two solves closer than this, jumps included
    down_band: float = 0.15  # keep the plan while demand is within 15% below what it was made for
    drain_s: float = 10.0  # a measured backlog is planned to drain in this many seconds
    spread_spare: bool = True  # give GPUs the MILP leaves unused to the stages, by load
    share_half_life_s: float = 300.0  # memory of the light/heavy answer mix (with share_quality)
    light_hold_half_life_s: float = 60.0  # the light stage is sized for the peak rate this recent
    defer_beyond_capacity: bool = False  # threshold = best quality; only with should_defer applied
    # batches waited per stage in the MILP's latency model, overriding the template's (DiffServe: 1);
    # a caller applying should_defer guards each query's deadline itself and may allow larger batches
    queue_factor: float | None = None

    def __post_init__(self) -> None:
        for name in ("period_s", "ewma_half_life_s", "fast_half_life_s", "drain_s", "share_half_life_s",
                     "light_hold_half_life_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PlannerConfig.{name} must be > 0; got {getattr(self, name)}")
        if self.headroom < 1 or self.jump_ratio <= 1:
            raise ValueError(f"PlannerConfig.headroom must be >= 1 and jump_ratio > 1; got "
                             f"headroom={self.headroom}, jump_ratio={self.jump_ratio}")
        if self.queue_factor is not None and self.queue_factor < 0:
            raise ValueError(f"PlannerConfig.queue_factor must be >= 0 or None; got {self.queue_factor}")
        if not 0 <= self.down_band < 1 or self.min_interval_s < 0:
            raise ValueError(f"PlannerConfig.down_band must lie in [0, 1) and min_interval_s >= 0; got "
                             f"down_band={self.down_band}, min_interval_s={self.min_interval_s}")


def _ewma(prev: float | None, sample: float, dt: float, half_life: float) -> float:
    if prev is None:
        return sample
    alpha = 1.0 - 0.5 ** (dt / half_life)  # time-aware: irregular call spacing weighs correctly
    return prev + alpha * (sample - prev)


def spread_spare(decision: CascadeDecision, inp: CascadeInputs) -> CascadeDecision:
    """Hand the GPUs a decision leaves unused to its stages in proportion to each stage's GPU load
    (light: demand / mu_L; heavy: demand f / mu_H); all to light when there is no heavy stage."""
    spare = int(inp.gpus) - decision.gpus_used
    if spare <= 0 or decision.status == "infeasible":
        return decision
    if decision.heavy_batch == 0:
        return replace(decision, light_replicas=decision.light_replicas + spare)
    li = int(np.flatnonzero(inp.light.batch == decision.light_batch)[0])
    hi = int(np.flatnonzero(inp.heavy.batch == decision.heavy_batch)[0])
    load_l = 1.0 / float(inp.light.throughput[li])
    load_h = decision.deferred_fraction / float(inp.heavy.throughput[hi])
    total = decision.gpus_used + spare
    # target shares of the whole cluster, never taking a replica away from either stage
    want_l = max(decision.light_replicas, min(decision.light_replicas + spare,
                                              round(total * load_l / (load_l + load_h))))
    return replace(decision, light_replicas=int(want_l), heavy_replicas=int(total - want_l))


class CascadePlanner:
    """Feeds the allocator demand it estimates from arrival counts; keeps the plan in force.

    share_quality: optional (light shares ascending, quality at each) points, piecewise-linear;
    when given, threshold quality is that of the projected answer mix (module docstring) instead
    of template.quality. Not thread-safe: one caller (the live controller, or the simulator) owns it."""

    def __init__(self, template: CascadeInputs, config: PlannerConfig = PlannerConfig(),
                 allocator: CascadeAllocator | None = None, start_s: float = 0.0,
                 share_quality: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if config.queue_factor is not None:
            template = replace(template, queue_factor=config.queue_factor)
        template.validate()
        if share_quality is not None:
            xs, ys = (np.asarray(a, dtype=np.float64) for a in share_quality)
            if xs.ndim != 1 or xs.shape != ys.shape or xs.size < 2 or np.any(np.diff(xs) <= 0):
                raise ValueError("share_quality needs two equal-length 1-d arrays, light shares strictly ascending")
            share_quality = (xs, ys)
        self._share_quality = share_quality
        self._mix = np.zeros(2)  # decayed counts of (light, heavy) answers
        self._template = template  # demand_qps ignored; profiles replaced by measured ones
        self.config = config
        self._allocator = allocator if allocator is not None else MilpCascade()
        self._last_obs_s = float(start_s)
        self._fast: float | None = None
        self._slow: float | None = None
        self._held = 0.0  # decaying maximum of the fast rate estimate (light-stage hold)
        self._plan: CascadeDecision | None = None
        self._planned_demand = 0.0  # demand (headroom and backlog included) the plan was made for
        self._planned_rate = 0.0  # the rate estimate behind it, before headroom
        self._last_check_s = -math.inf  # last time a re-plan was considered (period cadence)
        self._last_solve_s = -math.inf  # last time the allocator ran
        self._pending = 0  # arrivals reported with no time elapsed, counted in the next sample

    @property
    def plan(self) -> CascadeDecision | None:
        return self._plan

    @property
    def demand_qps(self) -> float:
        """The demand (qps, headroom and backlog included) the current plan was made for."""
        return self._planned_demand

    @property
    def rate_estimate_qps(self) -> float:
        """The current arrival-rate estimate, before headroom (0 before any observation)."""
        return max(self._fast or 0.0, self._slow or 0.0)

    def observe(self, now_s: float, arrivals: int, queue_delay_s: float = 0.0,
                light: StageProfile | None = None, heavy: StageProfile | None = None,
                answered_light: int = 0, answered_heavy: int = 0, gpus: int | None = None) -> CascadeDecision | None:
        """Feed arrivals counted since the last call (and optionally measured stage latency profiles
        / queueing delay, queries answered by each model since the last call, and the GPUs there
        are now); returns a new decision when it re-solved, else None. A new GPU count re-solves at
        once (once there is a rate estimate), keeping the demand estimates."""
        if min(arrivals, answered_light, answered_heavy) < 0 or queue_delay_s < 0:
            raise ValueError(f"counts and queue_delay_s must be >= 0; got arrivals={arrivals}, answered_light="
                             f"{answered_light}, answered_heavy={answered_heavy}, queue_delay_s={queue_delay_s}")
        dt = now_s - self._last_obs_s
        if dt < 0:
            raise ValueError(f"time went backwards: now_s={now_s} < last observation {self._last_obs_s}")
        if gpus is not None and gpus < 0:
            raise ValueError(f"gpus must be >= 0; got {gpus}")
        regrown = gpus is not None and gpus != self._template.gpus
        if light is not None or heavy is not None or regrown:
            self._template = replace(self._template, light=light or self._template.light,
                                     heavy=heavy or self._template.heavy,
                                     gpus=self._template.gpus if gpus is None else int(gpus))
        self._pending += arrivals
        if dt > 0:
            self._mix *= 0.5 ** (dt / self.config.share_half_life_s)
            sample = self._pending / dt
            self._pending = 0
            self._fast = _ewma(self._fast, sample, dt, self.config.fast_half_life_s)
            self._slow = _ewma(self._slow, sample, dt, self.config.ewma_half_life_s)
            self._held = max(self._fast, self._held * 0.5 ** (dt / self.config.light_hold_half_life_s))
            self._last_obs_s = now_s
        self._mix += (answered_light, answered_heavy)
        regrown = regrown and self._fast is not None
        if not (regrown or self._due(now_s)):
            return None
        self._last_check_s = now_s
        rate = self.rate_estimate_qps
        demand = rate * self.config.headroom + queue_delay_s * rate / self.config.drain_s
        cfg = self.config
        if (not regrown and self._plan is not None and now_s - self._last_solve_s < cfg.period_s * 4
                and self._planned_demand * (1 - cfg.down_band) <= demand <= self._planned_demand):
            # hysteresis: the plan still covers this demand; re-planning down would move replicas
            # for a small change (solved again at least every 4 periods so measured profiles get in)
            self._planned_rate = rate
            return None
        return self._solve(now_s, demand, rate)

    def _due(self, now_s: float) -> bool:
        if self._plan is None:
            return self._fast is not None
        since = now_s - self._last_check_s
        if since >= self.config.period_s:
            return True
        if since < self.config.min_interval_s:
            return False
        ref = max(self._planned_rate, 1e-9)
        return not (ref / self.config.jump_ratio <= (self._fast or 0.0) <= ref * self.config.jump_ratio)

    def mix_quality(self, rate_qps: float) -> np.ndarray | None:
        """Quality of each threshold: that of the light share the answers would reach after
        share_half_life_s more at this rate and f(t) (None without share_quality)."""
        if self._share_quality is None:
            return None
        light, heavy = self._mix
        # the next share_half_life_s at this rate, not one period: a one-period horizon makes the
        # best threshold flip between extremes as the mix crosses its optimum (and each flip moves
        # replicas); over the memory's own span the choice moves the mix gradually
        volume = max(rate_qps, 1e-9) * self.config.share_half_life_s
        f = np.asarray(self._template.deferred, dtype=np.float64)
        share = (light + volume * (1.0 - f)) / (light + heavy + volume)
        return np.interp(share, *self._share_quality)

    def _solve(self, now_s: float, demand: float, rate: float) -> CascadeDecision | None:
        inp = replace(self._template, demand_qps=float(demand))
        quality = self.mix_quality(rate)
        if quality is not None:
            inp = replace(inp, quality=quality)
        decision = self._allocator.allocate(inp)
        self._last_solve_s = now_s
        if decision.status == "infeasible" and self._plan is not None:
            return None  # nothing meets the SLO: keep serving with what is in place
        needed_heavy = decision.heavy_replicas  # what the MILP's heavy stage needs for the demand
        if self.config.defer_beyond_capacity:
            decision = defer_for_quality(decision, inp)
            needed_heavy = min(decision.heavy_replicas, 1)  # the overflow is answered light anyway
        if self.config.spread_spare:
            decision = spread_spare(decision, inp)
        decision = hold_light(decision, inp, self._held * self.config.headroom, needed_heavy)
        self._plan, self._planned_demand, self._planned_rate = decision, float(demand), rate
        return decision


def hold_light(decision: CascadeDecision, inp: CascadeInputs, held_demand_qps: float,
               heavy_floor: int) -> CascadeDecision:
    """The light stage at its largest batch within the latency budget (a cap: a replica takes what
    is queued, so a larger cap only adds throughput under load, and the MILP's batch would change
    with every re-plan), with the replicas `held_demand_qps` needs at that batch, taken from GPUs
    no stage uses, then from heavy replicas above `heavy_floor`."""
    if decision.status == "infeasible" or decision.light_replicas <= 0:
        return decision
    hi = None if decision.heavy_batch <= 0 else int(np.flatnonzero(inp.heavy.batch == decision.heavy_batch)[0])
    fits = [i for i in range(len(inp.light.batch)) if stage_latency(inp, i, hi) <= inp.slo_s + 1e-9]
    li = fits[-1] if fits else int(np.flatnonzero(inp.light.batch == decision.light_batch)[0])
    decision = replace(decision, light_batch=int(inp.light.batch[li]), expected_latency_s=stage_latency(inp, li, hi))
    want = math.ceil(held_demand_qps * (1 - 1e-9) / float(inp.light.throughput[li]) / inp.max_utilization)
    short = want - decision.light_replicas
    if short <= 0:
        return decision
    free = int(inp.gpus) - decision.gpus_used
    from_heavy = max(0, min(short - free, decision.heavy_replicas - heavy_floor))
    add = min(short, free) + from_heavy
    return replace(decision, light_replicas=decision.light_replicas + add,
                   heavy_replicas=decision.heavy_replicas - from_heavy)


def defer_for_quality(decision: CascadeDecision, inp: CascadeInputs) -> CascadeDecision:
    """For callers that apply `should_defer`: when a better-quality threshold exists than the one
    the planned capacity carries, put it in force and give every GPU the light stage does not
    need to the heavy stage (the overflow is answered from the light model in time). Light
    replicas and batch stay the MILP's (they carry all the demand); the heavy batch is the MILP's,
    or, where it planned no heavy stage, the largest meeting the latency budget. Ties in quality
    go to the least deferral, then the lower t."""
    if decision.status == "infeasible" or decision.light_replicas <= 0 or decision.light_replicas >= inp.gpus:
        return decision
    q = np.asarray(inp.quality, dtype=np.float64)
    best = np.flatnonzero(q >= q.max() - 1e-9)
    k = int(best[np.argmin(threshold_position(inp)[best])])
    if q[k] <= decision.expected_quality + 1e-9 or inp.deferred[k] <= 0:
        return decision
    heavy_batch = decision.heavy_batch
    if heavy_batch <= 0:
        li = int(np.flatnonzero(inp.light.batch == decision.light_batch)[0])
        budget = (inp.slo_s - inp.queue_delay_s) / (1.0 + inp.queue_factor) - float(inp.light.latency_s[li])
        fits = np.flatnonzero(inp.heavy.latency_s <= budget)
        if fits.size == 0:
            return decision
        heavy_batch = int(inp.heavy.batch[fits[-1]])
    return replace(decision, heavy_replicas=int(inp.gpus) - decision.light_replicas, heavy_batch=heavy_batch,
                   threshold_index=k, threshold=float(inp.thresholds[k]), deferred_fraction=float(inp.deferred[k]),
                   expected_quality=float(q[k]))


def expected_heavy_wait_s(now_s: float, free_at_s: np.ndarray, queue_ahead: int, batch: int,
                          batch_latency_s: float) -> float:
    """Expected wait before a query joining the heavy queue behind `queue_ahead` others starts.
    free_at_s: when each heavy replica is expected to be free (now for an idle one; a running
    batch's start plus its profile mean). Batches of `batch` leave the FIFO queue in order, each to
    the replica free first; a replica that took one is free again a batch latency later."""
    free = np.sort(np.maximum(np.asarray(free_at_s, dtype=np.float64), now_s))
    if free.size == 0 or batch <= 0:
        return math.inf
    j = queue_ahead // batch  # the batch this query will be in, counted from the queue's head
    return float(free[j % free.size] + (j // free.size) * batch_latency_s - now_s)


def should_defer(confidence: float, cutoff: float, now_s: float, arrival_s: float, slo_s: float,
                 heavy_wait_s: float, heavy_latency_s: float) -> bool:
    """Defer a light-answered query to the heavy model: its confidence is below the cutoff in
    force, and the heavy stage is expected to finish it within its SLO (else the light image is
    answered now: on time at lower quality beats a heavy image past the deadline or dropped)."""
    if not confidence < cutoff:
        return False
    return now_s + heavy_wait_s + heavy_latency_s <= arrival_s + slo_s
