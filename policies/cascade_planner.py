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
- `should_defer`: per query, a rejected light image goes to the heavy stage only if the heavy
  queue can still meet its SLO; otherwise the light image is the answer (on time, lower quality).
Everything comes from what a live system observes: arrival counts, queue delay, measured stage
profiles; never future arrivals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from policies.cascade_allocation import CascadeAllocator, CascadeDecision, CascadeInputs, MilpCascade, StageProfile


@dataclass(frozen=True)
class PlannerConfig:
    """Defaults are round numbers chosen from the 5 s period, not fitted to any trace."""

    period_s: float = 5.0  # re-solve cadence, as DiffServe's controller
    ewma_half_life_s: float = 10.0  # slow demand estimate: how long a drop takes to be believed
    fast_half_life_s: float = 1.0  # fast estimate: reacts to a rise within about a second
    headroom: float = 1.15  # plan for 15% over the estimate (Poisson noise at ~10 qps over 5 s is ~15%)
    jump_ratio: float = 1.3  # re-solve early when the fast estimate leaves planned x/÷ this
    min_interval_s: float = 1.0  # no two solves closer than this, jumps included
    down_band: float = 0.15  # keep the plan while demand is within 15% below what it was made for
    drain_s: float = 10.0  # a measured backlog is planned to drain in this many seconds
    spread_spare: bool = True  # give GPUs the MILP leaves unused to the stages, by load

    def __post_init__(self) -> None:
        for name in ("period_s", "ewma_half_life_s", "fast_half_life_s", "drain_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PlannerConfig.{name} must be > 0; got {getattr(self, name)}")
        if self.headroom < 1 or self.jump_ratio <= 1:
            raise ValueError(f"PlannerConfig.headroom must be >= 1 and jump_ratio > 1; got "
                             f"headroom={self.headroom}, jump_ratio={self.jump_ratio}")
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

    Not thread-safe: one caller (the live controller, or the simulator) owns it."""

    def __init__(self, template: CascadeInputs, config: PlannerConfig = PlannerConfig(),
                 allocator: CascadeAllocator | None = None, start_s: float = 0.0) -> None:
        template.validate()
        self._template = template  # demand_qps ignored; profiles replaced by measured ones
        self.config = config
        self._allocator = allocator if allocator is not None else MilpCascade()
        self._last_obs_s = float(start_s)
        self._fast: float | None = None
        self._slow: float | None = None
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
                light: StageProfile | None = None, heavy: StageProfile | None = None) -> CascadeDecision | None:
        """Feed arrivals counted since the last call (and optionally measured stage latency profiles
        / queueing delay); returns a new decision when it re-solved, else None."""
        if arrivals < 0 or queue_delay_s < 0:
            raise ValueError(f"arrivals and queue_delay_s must be >= 0; got {arrivals}, {queue_delay_s}")
        dt = now_s - self._last_obs_s
        if dt < 0:
            raise ValueError(f"time went backwards: now_s={now_s} < last observation {self._last_obs_s}")
        if light is not None or heavy is not None:
            self._template = replace(self._template, light=light or self._template.light,
                                     heavy=heavy or self._template.heavy)
        self._pending += arrivals
        if dt > 0:
            sample = self._pending / dt
            self._pending = 0
            self._fast = _ewma(self._fast, sample, dt, self.config.fast_half_life_s)
            self._slow = _ewma(self._slow, sample, dt, self.config.ewma_half_life_s)
            self._last_obs_s = now_s
        if not self._due(now_s):
            return None
        self._last_check_s = now_s
        rate = self.rate_estimate_qps
        demand = rate * self.config.headroom + queue_delay_s * rate / self.config.drain_s
        cfg = self.config
        if (self._plan is not None and now_s - self._last_solve_s < cfg.period_s * 4
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

    def _solve(self, now_s: float, demand: float, rate: float) -> CascadeDecision | None:
        inp = replace(self._template, demand_qps=float(demand))
        decision = self._allocator.allocate(inp)
        self._last_solve_s = now_s
        if decision.status == "infeasible" and self._plan is not None:
            return None  # nothing meets the SLO: keep serving with what is in place
        if self.config.spread_spare:
            decision = spread_spare(decision, inp)
        self._plan, self._planned_demand, self._planned_rate = decision, float(demand), rate
        return decision


def expected_heavy_wait_s(queue_len: int, replicas: int, batch: int, batch_latency_s: float,
                          residual_s: float = 0.0) -> float:
    """Expected wait before a query joining the heavy queue starts: the earliest running batch's
    expected remaining time, then one batch time per full round of `replicas x batch` ahead."""
    if replicas <= 0 or batch <= 0:
        return math.inf
    return max(residual_s, 0.0) + (queue_len // (replicas * batch)) * batch_latency_s


def should_defer(confidence: float, cutoff: float, now_s: float, arrival_s: float, slo_s: float,
                 heavy_wait_s: float, heavy_latency_s: float) -> bool:
    """Defer a light-answered query to the heavy model: its confidence is below the cutoff in
    force, and the heavy stage is expected to finish it within its SLO (else the light image is
    answered now: on time at lower quality beats a heavy image past the deadline or dropped)."""
    if not confidence < cutoff:
        return False
    return now_s + heavy_wait_s + heavy_latency_s <= arrival_s + slo_s
