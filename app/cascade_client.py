"""The ingress's side of the live cascade plan (the planner itself: deployments/live_cascade.py).

Each ingress replica counts cascade arrivals and answers, collects the discriminator's scores and
the stages' measured service times, and every ``cascade.report_period_s`` sends them to the
coordinator's planner (through a BaseModel replica: the coordinator is that deployment's actor)
and keeps the plan it gets back. A request then defers to the heavy model when its light image
scores below the plan's cutoff and the heavy stage can still answer within the SLO
(``policies.cascade_planner.should_defer``); otherwise the light image is the answer.

When the coordinator does not answer for ``FALLBACK_AFTER`` report periods, the config's fixed
threshold is in force again (the requests keep being served; only the plan is lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from deployments.config import ServeConfig
from policies.cascade_planner import expected_heavy_wait_s, should_defer

logger = logging.getLogger("ray.serve")
FALLBACK_AFTER = 3  # failed reports before the config's threshold is back in force


class CascadeClient:
    def __init__(self, config: ServeConfig, call: Callable[[dict], Awaitable[dict]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.call = call
        self.clock = clock
        self.enabled = config.cascade_planned()
        self.plan: dict = self.config_plan()
        self.failures = 0
        self.heavy_inflight = 0
        self._task: asyncio.Task | None = None
        self._reset()

    def config_plan(self) -> dict:
        return {"source": "config", "threshold": self.config.cascade.threshold}

    def _reset(self) -> None:
        self.arrivals = self.answered_light = self.answered_heavy = 0
        self.scores: list[float] = []
        self.light_s: list[float] = []
        self.heavy_s: list[float] = []
        self.queue_s: list[float] = []

    def start(self) -> None:
        """Start the report loop on the running event loop (once; a no-op when the planner is off)."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # -- what a request reports ------------------------------------------------------------------
    def arrived(self) -> None:
        self.arrivals += 1

    def light_done(self, service_s: float, queue_s: float, scores: list[float]) -> None:
        self.light_s.append(service_s)
        self.queue_s.append(queue_s)
        self.scores.extend(scores)

    def heavy_done(self, service_s: float, queue_s: float) -> None:
        self.heavy_s.append(service_s)
        self.queue_s.append(queue_s)

    def answered(self, light: int, heavy: int) -> None:
        self.answered_light += light
        self.answered_heavy += heavy

    # -- what a request asks ---------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return float(self.plan["threshold"])

    def defer(self, score: float, arrived_at: float) -> bool:
        """Whether a light image scoring ``score`` goes to the heavy model (``arrived_at``: this
        client's clock when the request arrived). Past the cutoff only while the heavy stage, with
        the work this ingress already sent it, is expected to finish within the SLO."""
        heavy_s = self.plan.get("heavy_service_s")
        if not self.enabled or self.plan["source"] != "planner" or not heavy_s:
            return score < self.threshold
        now = self.clock()
        replicas = max(int(self.plan.get("heavy_replicas") or 1), 1)
        # the ingress does not see when each heavy replica frees: its own heavy requests in flight
        # queue FIFO over the plan's heavy replicas, one at a time each
        wait = expected_heavy_wait_s(now, [now] * replicas, self.heavy_inflight, 1, float(heavy_s))
        return should_defer(score, self.threshold, now, arrived_at, self.config.slo.latency_s,
                            wait, float(heavy_s))

    # -- the report loop -------------------------------------------------------------------------
    def take_report(self) -> dict:
        report = {"arrivals": self.arrivals, "answered_light": self.answered_light,
                  "answered_heavy": self.answered_heavy, "scores": self.scores,
                  "light_s": self.light_s, "heavy_s": self.heavy_s,
                  "queue_delay_s": sum(self.queue_s) / len(self.queue_s) if self.queue_s else 0.0}
        self._reset()
        return report

    async def report_once(self) -> None:
        report = self.take_report()
        try:
            self.plan = await self.call(report)
            self.failures = 0
        except Exception as exc:  # the coordinator away (restarting, overloaded): serve on
            self.failures += 1
            if self.failures == FALLBACK_AFTER:
                logger.warning("cascade planner unreachable for %d reports (%s); the config's "
                               "threshold %.3f is in force until it answers", self.failures,
                               type(exc).__name__, self.config.cascade.threshold)
            if self.failures >= FALLBACK_AFTER:
                self.plan = self.config_plan()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.cascade.report_period_s)
            await self.report_once()
