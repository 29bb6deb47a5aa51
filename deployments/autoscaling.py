"""The BaseModel deployment's custom Ray Serve autoscaler: ``policies.autoscaling`` behind the
project's one ``Guardrails``, fed by the replicas' ``record_autoscaling_stats()``.

``autoscaling_options(config)`` gives the deployment's ``autoscaling_config``; its ``policy`` is
``AutoscalingPolicy(policy_function="deployments.autoscaling:BaseModelAutoscaler",
policy_kwargs={...})``. The Serve controller instantiates the class once (kwargs are JSON) and
calls it every control-loop iteration (~0.1 s) with Ray's ``AutoscalingContext``.

What the adapter feeds ``policies.autoscaling.AutoscalingContext`` (S2 custom metrics, per
replica; Ray averages each over ``look_back_period_s`` into ``ctx.aggregated_metrics`` and keeps
the samples in ``ctx.raw_metrics``):

- ``arrival_rate``: growth of each replica's ``requests_total`` (latest sample) since the
  previous decision tick, summed over replicas, plus the growth of Ray's handle-queued requests
  (``ctx.total_queued_requests``: a saturated deployment accepts only what it serves, the rest
  waits at the handles), over the controller time between the ticks. A replica first seen
  contributes its whole count (it started at 0 since about the last tick).
- ``service_time_s``: the replicas' ``service_s`` (window means), weighted by their
  ``requests_total``; the last known value while no replica has served, else ``default_service_s``.
- ``total_num_requests``: the larger of Ray's own total (running + queued at handles) and the
  replicas' ``queue_len + loads_in_progress`` plus Ray's handle-queued requests (a model load
  occupies a replica like a request; Ray's count does not see prefetch loads).

Decisions run at most once per ``tick_s`` (the metrics report period): Ray pushes replica
metrics once per period, so a 0.1 s tick would see no growth nine times in ten, and the
forecast's smoothing (``ewma-headroom``'s alpha) would depend on how busy the controller is.
Between ticks the adapter answers the current target. Missing, non-numeric, non-finite or
negative metrics are ignored (that replica counts as unreported); if the policy itself fails,
the adapter logs it and holds the target, so a bad metric never crashes the controller's loop.

State round-trips through ``ctx.policy_state`` under the key ``"t2i"`` (guard timers, the
forecast's state, the last tick and per-replica counters); Ray's own delay keys sit beside it.

Delays are applied once, by ``Guardrails``. Ray 2.60 wraps every custom deployment-level policy
in ``ray.serve.autoscaling_policy._apply_autoscaling_config``: scaling factors, then its own
``upscale_delay_s`` / ``downscale_delay_s`` timers (kept in the same ``policy_state``), then the
controller clips to ``min_replicas``/``max_replicas`` (``apply_bounds``). So
``autoscaling_options`` sets Ray's delays to 0 (its timer then passes any change through on the
first tick) and leaves its factors at 1 (identity on an integer target); the delays and the
hysteresis are ``control.autoscaling``'s, in ``Guardrails``, the same code the simulator runs.
Bounds are applied twice and agree: Guardrails uses ``ctx.capacity_adjusted_min/max_replicas``,
which are Ray's ``min_replicas``/``max_replicas`` (from ``deployments.base_model.autoscaling``)
scaled by the application's ``target_capacity``. From zero replicas with requests waiting, Ray
scales up without calling the policy (its cold-start path), as Guardrails would.

Which replica goes on a scale-down: Ray 2.60 lets neither the policy nor the deployment choose.
A policy returns only a count; ``DeploymentState`` turns a lower target into
``DeploymentDownscaleRequest(num_to_stop=n)`` and the controller's private
``DeploymentScheduler._get_replicas_to_stop`` picks the replicas: those not yet running first,
then running ones off the head node, on nodes that miss the label selector, on nodes with the
fewest replicas, newest first within a node. There is no victim hook, ranking callback or
per-replica weight (``ReplicaRank`` only numbers replicas; ranks are reused and compacted). On
one node the live order is therefore exactly ``SCALE_DOWN["newest-first"]``, whatever
``control.autoscaling.scale_down`` says; ``cache-aware`` runs only in the simulator. The
adapter logs each scale-down decision with the replicas' ``cache_value`` (S2: the replica's
own estimate of what its cache is worth, demand x load seconds saved; 0 if it reports none),
so a run shows what the cache-blind choice cost. The lever that remains is placement: pinning
hot pipelines on the oldest replicas makes Ray's newest-first victim the cheapest one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from deployments.config import ServeConfig
from policies.autoscaling import AUTOSCALING, AutoscalingContext, AutoscalingPolicy, Guardrails

logger = logging.getLogger("ray.serve")

POLICY_PATH = "deployments.autoscaling:BaseModelAutoscaler"
STATE_KEY = "t2i"  # this adapter's part of ctx.policy_state; Ray keeps its own keys beside it
RAY_SCALE_DOWN_ORDER = "newest-first"  # what Ray does on one node, as a SCALE_DOWN name
LOOK_BACK_PERIODS = 5  # Ray's look-back window, in report periods (records once per period)

# the S2 metrics (BaseModel.record_autoscaling_stats) this policy reads; busy_s and
# resident_bytes are reported too but not read here
QUEUE_LEN, LOADS = "queue_len", "loads_in_progress"
REQUESTS_TOTAL, SERVICE_S, CACHE_VALUE = "requests_total", "service_s", "cache_value"
CASCADE_REPLICAS = "cascade_replicas"  # the cascade plan's light + heavy replicas (latest sample)


def _number(value: Any) -> float | None:
    """A finite, non-negative float, or None (bools, strings, NaN, inf and negatives are bad)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def _key(replica_id: Any) -> str:
    return str(getattr(replica_id, "unique_id", replica_id))


def _latest(series: Any) -> float | None:
    """The newest sample's value of a Ray ``TimeSeries`` (a list of ``TimeStampedValue``)."""
    try:
        return _number(max(series, key=lambda point: point.timestamp).value) if series else None
    except (AttributeError, TypeError):
        return None


def replica_metrics(ctx: Any) -> dict[str, dict[str, float]]:
    """Per running replica (by unique id), the S2 metrics it reported that are usable numbers:
    window means from ``ctx.aggregated_metrics``, ``requests_total`` from its newest raw sample."""
    aggregated = ctx.aggregated_metrics or {}
    raw = ctx.raw_metrics or {}
    out: dict[str, dict[str, float]] = {_key(r): {} for r in ctx.running_replicas or []}
    for name in (QUEUE_LEN, LOADS, SERVICE_S, CACHE_VALUE):
        per_replica = aggregated.get(name)
        for rid, value in (per_replica.items() if isinstance(per_replica, Mapping) else ()):
            if _key(rid) in out and (v := _number(value)) is not None:
                out[_key(rid)][name] = v
    for name in (REQUESTS_TOTAL, CASCADE_REPLICAS):
        per_replica = raw.get(name)
        for rid, series in (per_replica.items() if isinstance(per_replica, Mapping) else ()):
            if _key(rid) in out and (v := _latest(series)) is not None:
                out[_key(rid)][name] = v
    return out


def with_floor(policy: AutoscalingPolicy, floor: float) -> AutoscalingPolicy:
    """``policy``, never asking for fewer than ``floor`` replicas (the cascade plan's stages): the
    Guardrails around it still apply their delays and bounds to the result."""
    def floored(ctx: AutoscalingContext) -> tuple[float, dict]:
        target, state = policy(ctx)
        return max(float(target), floor), state
    return floored


def to_policy_context(ctx: Any, metrics: Mapping[str, Mapping[str, float]], adapter: Mapping[str, Any],
                      default_service_s: float) -> tuple[AutoscalingContext, dict[str, Any]]:
    """Ray's context + the replicas' metrics -> the policies' context; and the adapter's next state
    (``adapter`` is its state from the previous tick: ``t``, ``counts``, ``service_s``, ``queued``)."""
    now = float(ctx.current_time)
    prev_t = adapter.get("t")
    prev_counts: Mapping[str, float] = adapter.get("counts", {})
    counts = {rid: c for rid, c in prev_counts.items() if rid in metrics}  # keep while unreported
    growth = 0.0
    for rid, m in metrics.items():
        if REQUESTS_TOTAL not in m:
            continue
        total, before = m[REQUESTS_TOTAL], prev_counts.get(rid)
        growth += total if before is None or total < before else total - before
        counts[rid] = total
    # arrivals = accepted + growth of the handles' queue (a saturated deployment accepts only
    # what it can serve; the rest waits at the handles, unseen by the replicas' counters)
    queued = _number(ctx.total_queued_requests) or 0.0
    if prev_t is not None and now > prev_t:
        rate = max(growth + queued - float(adapter.get("queued", queued)), 0.0) / (now - prev_t)
    else:
        rate = 0.0

    weighted = [(m[SERVICE_S], m.get(REQUESTS_TOTAL, 0.0)) for m in metrics.values() if m.get(SERVICE_S, 0) > 0]
    weight = sum(w for _, w in weighted)
    if weighted:
        service = (sum(s * w for s, w in weighted) / weight if weight > 0
                   else sum(s for s, _ in weighted) / len(weighted))
    else:
        service = float(adapter.get("service_s", default_service_s))

    ray_total = _number(ctx.total_num_requests) or 0.0
    reported = [m[QUEUE_LEN] + m.get(LOADS, 0.0) for m in metrics.values() if QUEUE_LEN in m]
    total = max(ray_total, sum(reported) + queued) if reported else ray_total

    policy_ctx = AutoscalingContext(now=now, current_replicas=int(ctx.current_num_replicas),
                                    target_replicas=int(ctx.target_num_replicas), total_num_requests=total,
                                    arrival_rate=rate, service_time_s=service)
    return policy_ctx, {"t": now, "counts": counts, "service_s": service, "queued": queued, "rate": rate,
                        "total": total}


class BaseModelAutoscaler:
    """Ray Serve autoscaling policy (class form: Ray builds it once with ``policy_kwargs``).

    ``__call__(ctx) -> (target, policy_state)``; see the module docstring for what it reads.
    """

    def __init__(self, policy: str = "ewma-headroom", policy_args: dict | None = None,
                 upscale_delay_s: float = 10.0, downscale_delay_s: float = 60.0, hysteresis: float = 0.1,
                 tick_s: float = 1.0, default_service_s: float = 1.0, scale_down: str = "cache-aware") -> None:
        if not tick_s > 0 or not default_service_s > 0:
            raise ValueError(f"tick_s ({tick_s}) and default_service_s ({default_service_s}) must be > 0")
        self.policy = AUTOSCALING.create(policy, **(policy_args or {}))
        self.delays = {"upscale_delay_s": float(upscale_delay_s), "downscale_delay_s": float(downscale_delay_s),
                       "hysteresis": float(hysteresis)}
        Guardrails(1, 1, **self.delays)  # fail at deploy time, not on the first tick
        self.tick_s = float(tick_s)
        self.default_service_s = float(default_service_s)
        self.scale_down = scale_down
        self._failing = False
        if scale_down != RAY_SCALE_DOWN_ORDER:
            logger.info("BaseModel autoscaler: control.autoscaling.scale_down=%r is not applied live; Ray 2.60 "
                        "picks the replicas to stop itself (newest first on a node)", scale_down)

    def guardrails(self, ctx: Any) -> Guardrails:
        lo, hi = int(ctx.capacity_adjusted_min_replicas), int(ctx.capacity_adjusted_max_replicas)
        return Guardrails(min(lo, hi), hi, **self.delays)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        state = dict(ctx.policy_state or {})
        mine = dict(state.get(STATE_KEY) or {})
        adapter = dict(mine.get("adapter") or {})
        now = float(ctx.current_time)
        last = adapter.get("t")
        if last is not None and now - last + 1e-6 < self.tick_s:
            return int(ctx.target_num_replicas), state
        try:
            metrics = replica_metrics(ctx)
            policy_ctx, adapter = to_policy_context(ctx, metrics, adapter, self.default_service_s)
            # the cascade planner's replica target, as the replicas last heard it from the coordinator
            floor = max((m.get(CASCADE_REPLICAS, 0.0) for m in metrics.values()), default=0.0)
            guarded = self.guardrails(ctx)(with_floor(self.policy, floor) if floor > 0 else self.policy)
            target, policy_state = guarded(replace(policy_ctx, policy_state=mine.get("policy", {})))
        except Exception:  # noqa: BLE001 - hold the target; the controller's loop must go on
            if not self._failing:
                logger.exception("BaseModel autoscaler failed; holding %d replicas", ctx.target_num_replicas)
            self._failing = True
            return int(ctx.target_num_replicas), state
        self._failing = False
        if target < ctx.target_num_replicas:
            values = {rid: m.get(CACHE_VALUE, 0.0) for rid, m in metrics.items()}
            logger.info("BaseModel autoscaler: %d -> %d replicas (Ray's scheduler picks which stop, newest first "
                        "on a node; cache_value by replica: %s)", ctx.target_num_replicas, target, values)
        state[STATE_KEY] = {"adapter": adapter, "policy": policy_state}
        return int(target), state


def autoscaling_options(config: ServeConfig) -> dict | None:
    """The BaseModel deployment's ``autoscaling_config`` option, or None without
    ``deployments.base_model.autoscaling`` (fixed ``num_replicas``).

    ``control.policies == "ray-default"``: Ray's queue-length autoscaler with its own delays,
    as today. Otherwise this module's policy: Ray's delays 0 (Guardrails applies
    ``control.autoscaling``'s), metrics recorded and pushed every ``control.report_period_s``,
    averaged over ``LOOK_BACK_PERIODS`` of them; the policy decides once per period.
    """
    bounds = config.deployments.base_model.autoscaling
    if bounds is None:
        return None
    options: dict[str, Any] = {"min_replicas": bounds.min_replicas, "max_replicas": bounds.max_replicas,
                               "target_ongoing_requests": bounds.target_ongoing_requests}
    if config.control.policies == "ray-default":
        return {"autoscaling_config": options}
    control = config.control.autoscaling
    period = config.control.report_period_s
    policy_args = dict(control.policy_args)
    if control.policy == "ray-queue-length":  # the bounds' target is that policy's one knob
        policy_args.setdefault("target_ongoing_requests", bounds.target_ongoing_requests)
    kwargs = {"policy": control.policy, "policy_args": policy_args,
              "upscale_delay_s": control.upscale_delay_s, "downscale_delay_s": control.downscale_delay_s,
              "hysteresis": control.hysteresis, "tick_s": period, "scale_down": control.scale_down}
    options.update(metrics_interval_s=period, look_back_period_s=LOOK_BACK_PERIODS * period,
                   upscale_delay_s=0.0, downscale_delay_s=0.0,
                   policy={"policy_function": POLICY_PATH, "policy_kwargs": kwargs})
    return {"autoscaling_config": options}
