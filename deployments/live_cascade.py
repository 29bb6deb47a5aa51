"""The live cascade's planner: a thin adapter from the ingress's reports to ``policies.cascade_planner``.

It lives in the cache coordinator (one per application, recreated by Serve after a crash), so
every ingress replica follows one plan. Every ``cascade.report_period_s`` an ingress replica calls
``CacheCoordinator.cascade_report`` with what it saw since its last report and gets the plan in
force back:

    report = {"arrivals": int, "answered_light": int, "answered_heavy": int,
              "scores": [float], "light_s": [float], "heavy_s": [float], "queue_delay_s": float}
    plan   = {"source": "planner" | "config", "threshold": float, "deferred_fraction": float,
              "light_replicas": int, "heavy_replicas": int, "demand_qps": float, ...}

What the planner decides in is the *fraction* of queries deferred, not a score: the allocation's
threshold grid is f in [0, 1] (f(t) = t, quality(t) = t: more heavy answers are better, which is
DiffServe's objective of the highest threshold that capacity and the SLO allow). The score cutoff
that defers that fraction is the f-quantile of the discriminator's recent scores, so the plan
follows the score distribution the discriminator actually produces on today's prompts. Stage
profiles are batch 1 (a BaseModel replica serves one request at a time) with the measured mean
service times: light generation plus discriminator, and heavy generation.

Until ``MIN_SCORES`` scores and one service time per stage have been seen, the plan is the
config's: ``cascade.threshold`` and no replica split (``source: "config"``).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from deployments.config import ServeConfig
from policies.cascade_allocation import CascadeInputs, StageProfile
from policies.cascade_planner import CascadePlanner, PlannerConfig

GRID = np.linspace(0.0, 1.0, 21)  # deferred fractions the allocation chooses among
MIN_SCORES = 32  # scores before the quantile cutoff is trusted over the config's threshold
SCORE_WINDOW = 2048  # recent scores the cutoff is the quantile of
LATENCY_WINDOW = 256  # recent service times per stage the profile's mean is taken over


class LiveCascade:
    """One application's cascade plan; see the module docstring for the protocol."""

    def __init__(self, config: ServeConfig, start_s: float, planner_args: dict | None = None) -> None:
        self.config = config
        self.slo_s = float(config.slo.latency_s)
        self.planner_config = PlannerConfig(**(planner_args if planner_args is not None
                                               else config.cascade.planner_args))
        self.start_s = float(start_s)
        self.scores: deque[float] = deque(maxlen=SCORE_WINDOW)
        self.light_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.heavy_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.planner: CascadePlanner | None = None
        self.pending_arrivals = 0  # arrivals reported before the planner could start
        self.gpus = 0
        self.made_at: float | None = None
        self.reports = 0
        self._doc = self._make_doc()

    def report(self, now_s: float, report: dict, gpus: int) -> dict:
        """Take one ingress report (see the module docstring); the plan in force after it."""
        arrivals, light_n, heavy_n = (_count(report, k) for k in ("arrivals", "answered_light", "answered_heavy"))
        queue_delay = max(float(report.get("queue_delay_s") or 0.0), 0.0)
        self.scores.extend(_finite(report.get("scores")))
        self.light_s.extend(_finite(report.get("light_s"), positive=True))
        self.heavy_s.extend(_finite(report.get("heavy_s"), positive=True))
        self.reports += 1
        self.gpus = gpus
        if self.planner is None:
            self.pending_arrivals += arrivals
            if not self._can_plan():
                return self._refresh()
            self.planner = CascadePlanner(self._inputs(), self.planner_config, start_s=self.start_s)
            arrivals, self.pending_arrivals = self.pending_arrivals, 0
        # a new replica count re-solves at once, with the demand estimates kept
        decision = self.planner.observe(now_s, arrivals, queue_delay, light=self._profile(self.light_s),
                                        heavy=self._profile(self.heavy_s), answered_light=light_n,
                                        answered_heavy=heavy_n, gpus=gpus)
        if decision is not None:
            self.made_at = now_s
        return self._refresh()

    def _can_plan(self) -> bool:
        return len(self.scores) >= MIN_SCORES and bool(self.light_s) and bool(self.heavy_s) and self.gpus > 0

    def _profile(self, samples: deque) -> StageProfile:
        return StageProfile(np.array([1]), np.array([float(np.mean(samples))]))

    def _inputs(self) -> CascadeInputs:
        return CascadeInputs(demand_qps=0.0, gpus=self.gpus, slo_s=self.slo_s,
                             light=self._profile(self.light_s), heavy=self._profile(self.heavy_s),
                             thresholds=GRID, deferred=GRID.copy(), quality=GRID.copy())

    def cutoff(self, deferred_fraction: float) -> float:
        """The score below which ``deferred_fraction`` of recent light images fall."""
        if deferred_fraction <= 0:
            return 0.0  # scores lie in [0, 1]: nothing is below 0
        if deferred_fraction >= 1:
            return float(np.nextafter(1.0, 2.0))  # every score is below
        return float(np.quantile(np.fromiter(self.scores, float), deferred_fraction))

    def plan(self) -> dict:
        """The plan in force and what it was made for (also GET /v1/cascade's body): a copy of
        what the last report left (its score cutoff is a quantile, computed once per report)."""
        return dict(self._doc)

    def _refresh(self) -> dict:
        self._doc = self._make_doc()
        return self.plan()

    def _make_doc(self) -> dict:
        doc = {"reports": self.reports, "scores_seen": len(self.scores), "gpus": self.gpus,
               "slo_s": self.slo_s, "light_service_s": _mean(self.light_s),
               "heavy_service_s": _mean(self.heavy_s)}
        decision = None if self.planner is None else self.planner.plan
        if decision is None or decision.status == "infeasible":
            doc.update(source="config", threshold=self.config.cascade.threshold, deferred_fraction=None,
                       light_replicas=None, heavy_replicas=None, demand_qps=None, status=(
                           decision.status if decision is not None else "waiting for measurements"),
                       rate_estimate_qps=None if self.planner is None else self.planner.rate_estimate_qps,
                       made_at=self.made_at)
            return doc
        doc.update(source="planner", threshold=self.cutoff(decision.deferred_fraction),
                   deferred_fraction=decision.deferred_fraction, light_replicas=decision.light_replicas,
                   heavy_replicas=decision.heavy_replicas, demand_qps=self.planner.demand_qps,
                   rate_estimate_qps=self.planner.rate_estimate_qps, status=decision.status,
                   served_qps=decision.served_qps, expected_latency_s=decision.expected_latency_s,
                   made_at=self.made_at)
        return doc


def _count(report: dict, key: str) -> int:
    value = report.get(key) or 0
    if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise ValueError(f"cascade report: {key} must be a count >= 0, got {value!r}")
    return int(value)


def _finite(values, positive: bool = False) -> list[float]:
    """The finite numbers of a reported list (in [0, 1] for scores; > 0 for service times)."""
    out = []
    for v in values or ():
        if isinstance(v, (int, float)) and np.isfinite(v) and (v > 0 if positive else 0 <= v <= 1):
            out.append(float(v))
    return out


def _mean(samples: deque) -> float | None:
    return round(float(np.mean(samples)), 6) if samples else None
