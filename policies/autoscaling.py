"""Autoscaling: replica targets per deployment, and which replica to remove when scaling down.

A policy is ``fn(ctx) -> (desired, state)`` as in Ray Serve's ``autoscaling_policy.py``: state
goes in through ``ctx.policy_state`` and comes back out, time is ``ctx.now``. ``desired`` is a
raw float; every policy is wrapped by the one ``Guardrails`` (bounds, delays, hysteresis,
scaling factors), so two policies differ only in their forecast, never in their safety rules.

- ``ray-queue-length``: Ray Serve's default (``replica_queue_length_autoscaling_policy``):
  desired = total ongoing+queued requests / ``target_ongoing_requests`` (default 2). Pair it
  with ``Guardrails.ray_defaults(...)``: upscale delay 30 s, downscale delay 600 s, factors 1,
  no hysteresis, 0 -> N without delay (AutoscalingConfig defaults in ray/serve/config.py).
- ``ewma-headroom``: forecast arrivals with an EWMA, provision ``forecast x service time x
  (1 + headroom)`` busy replicas (Little's law): it scales on demand, before queues build.

Scale-down (``SCALE_DOWN``): ``cache-aware`` removes the replica whose cache is worth least
(demand x load time saved, shared copies discounted), the talk's "cache-aware scaling";
``newest-first`` is the cache-blind baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from policies.registry import Registry
from policies.snapshot import REMOTE, ClusterSnapshot

_EPS = 1e-6  # delay comparisons tolerate float drift (Ray does the same)


@dataclass(frozen=True)
class AutoscalingContext:
    """What an autoscaler sees at one control-loop tick, for one deployment."""

    now: float
    current_replicas: int  # running
    target_replicas: int  # the target decided last time
    total_num_requests: float  # ongoing + queued, averaged over the look-back window (Ray's metric)
    arrival_rate: float = 0.0  # requests/s since the previous tick
    service_time_s: float = 1.0  # mean seconds a replica spends per request (compute + loads)
    policy_state: Mapping[str, Any] = field(default_factory=dict)


AutoscalingPolicy = Callable[[AutoscalingContext], tuple[float, dict]]
AUTOSCALING: Registry[AutoscalingPolicy] = Registry("autoscaling", discover="policies")


@AUTOSCALING.register("ray-queue-length")
def ray_queue_length(target_ongoing_requests: float = 2.0) -> AutoscalingPolicy:
    """Ray Serve's default queue-length policy (the scaling itself happens in Guardrails)."""
    if not target_ongoing_requests > 0:
        raise ValueError(f"target_ongoing_requests must be > 0, got {target_ongoing_requests}")

    def policy(ctx: AutoscalingContext) -> tuple[float, dict]:
        if ctx.current_replicas == 0:
            return float(ctx.target_replicas), dict(ctx.policy_state)
        return ctx.total_num_requests / target_ongoing_requests, dict(ctx.policy_state)

    policy.name = "ray-queue-length"  # type: ignore[attr-defined]
    return policy


@AUTOSCALING.register("ewma-headroom")
def ewma_headroom(alpha: float = 0.3, headroom: float = 0.2, concurrency: float = 1.0) -> AutoscalingPolicy:
    """EWMA of the arrival rate x service time x (1 + headroom) / requests a replica runs at once."""
    if not (0 < alpha <= 1 and headroom >= 0 and concurrency > 0):
        raise ValueError(f"need 0 < alpha <= 1 (got {alpha}), headroom >= 0 (got {headroom}), "
                         f"concurrency > 0 (got {concurrency})")

    def policy(ctx: AutoscalingContext) -> tuple[float, dict]:
        prev = ctx.policy_state.get("ewma_rate")
        rate = ctx.arrival_rate if prev is None else alpha * ctx.arrival_rate + (1 - alpha) * prev
        state = {**ctx.policy_state, "ewma_rate": rate}
        return rate * ctx.service_time_s * (1 + headroom) / concurrency, state

    policy.name = "ewma-headroom"  # type: ignore[attr-defined]
    return policy


@dataclass(frozen=True)
class Guardrails:
    """The one wrapper every autoscaler goes through: factors, hysteresis, delays, then bounds.

    Hysteresis is a dead band: the target moves up only when desired > target x (1 + h) and down
    only when desired < target x (1 - h), so noise around the target does not flap replicas
    (each flap costs a cold cache). Delays work as in Ray: a move happens only after the wish
    to move in that direction has lasted ``upscale_delay_s`` / ``downscale_delay_s``. From zero
    replicas with work waiting, scaling up is immediate (Ray's cold-start path).
    """

    min_replicas: int = 1
    max_replicas: int = 1
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    hysteresis: float = 0.0
    upscaling_factor: float = 1.0
    downscaling_factor: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas ({self.min_replicas}) <= max_replicas ({self.max_replicas})")
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0 or not 0 <= self.hysteresis < 1:
            raise ValueError(f"upscale_delay_s ({self.upscale_delay_s}) and downscale_delay_s "
                             f"({self.downscale_delay_s}) must be >= 0, hysteresis ({self.hysteresis}) in [0, 1)")
        if self.upscaling_factor <= 0 or self.downscaling_factor <= 0:
            raise ValueError("upscaling_factor and downscaling_factor must be > 0")

    @classmethod
    def ray_defaults(cls, min_replicas: int = 1, max_replicas: int = 1) -> "Guardrails":
        """Ray Serve AutoscalingConfig defaults (upscale 30 s, downscale 600 s, factors 1)."""
        return cls(min_replicas, max_replicas, 30.0, 600.0, 0.0, 1.0, 1.0)

    def clamp(self, n: float) -> int:
        return int(min(max(n, self.min_replicas), self.max_replicas))

    def __call__(self, policy: AutoscalingPolicy) -> Callable[[AutoscalingContext], tuple[int, dict]]:
        def guarded(ctx: AutoscalingContext) -> tuple[int, dict]:
            inner = {k: v for k, v in ctx.policy_state.items() if k != "_guard"}
            guard = dict(ctx.policy_state.get("_guard", {}))
            cur = ctx.target_replicas
            if ctx.current_replicas == 0 and ctx.total_num_requests > 0:  # cold start: no delay
                up = self.clamp(max(math.ceil(self.upscaling_factor), cur, 1))
                return up, {**inner, "_guard": {"dir": 0, "since": None}}
            raw, inner = policy(_with_state(ctx, inner))
            raw = float(raw)
            if not math.isfinite(raw) or raw < 0:
                raise ValueError(f"autoscaling policy {getattr(policy, 'name', policy)!r} returned desired "
                                 f"replicas {raw} (needs a finite number >= 0)")
            desired = self._scaled(raw, cur)
            if desired > cur and raw <= cur * (1 + self.hysteresis):
                desired = cur
            elif desired < cur and raw >= cur * (1 - self.hysteresis):
                desired = cur
            if desired < cur and cur > 1:
                desired = max(desired, 1)  # as in Ray: to zero only from one replica
            desired = self.clamp(desired)
            direction = (desired > cur) - (desired < cur)
            if direction == 0:
                return self.clamp(cur), {**inner, "_guard": {"dir": 0, "since": None}}
            since = guard.get("since") if guard.get("dir") == direction else None
            since = ctx.now if since is None else since
            delay = self.upscale_delay_s if direction > 0 else self.downscale_delay_s
            if ctx.now - since + _EPS >= delay:
                return desired, {**inner, "_guard": {"dir": 0, "since": None}}
            return self.clamp(cur), {**inner, "_guard": {"dir": direction, "since": since}}

        guarded.name = getattr(policy, "name", "custom")  # type: ignore[attr-defined]
        return guarded

    def _scaled(self, raw: float, cur: int) -> int:
        """Ray's scaling factors: move by factor x (desired - current), at least one step down."""
        if cur == 0:
            return math.ceil(raw - 1e-9)
        delta = raw - cur
        factor = self.upscaling_factor if delta > 0 else self.downscaling_factor
        n = math.ceil(cur + factor * delta - 1e-9)
        if math.ceil(raw - 1e-9) < cur and n == cur:
            n -= 1
        return n


def _with_state(ctx: AutoscalingContext, state: Mapping[str, Any]) -> AutoscalingContext:
    return AutoscalingContext(ctx.now, ctx.current_replicas, ctx.target_replicas, ctx.total_num_requests,
                              ctx.arrival_rate, ctx.service_time_s, state)


@runtime_checkable
class ScaleDown(Protocol):
    name: ClassVar[str]

    def choose(self, snap: ClusterSnapshot, component_demand: np.ndarray, n: int) -> np.ndarray:
        """Up to ``n`` distinct replica indices to remove, the first removed first."""
        ...


SCALE_DOWN: Registry[ScaleDown] = Registry("scale-down", discover="policies")


def cache_value(snap: ClusterSnapshot, component_demand: np.ndarray) -> np.ndarray:
    """Worth of each replica's cache: sum over what it holds of demand x load seconds it saves,
    each copy counted 1/copies (losing one of ten copies costs little, the only copy a lot)."""
    nz = np.flatnonzero(component_demand > 0)
    if nz.size == 0:
        return np.zeros(snap.replicas.n)
    tier = snap.replicas.tier[:, nz]  # (R, U)
    cost = snap.components.load_cost_s[nz]  # (U, 4)
    held = tier < REMOTE
    saved = cost[:, REMOTE][None, :] - np.take_along_axis(cost.T, tier.astype(np.intp), axis=0)
    copies = np.maximum(held.sum(axis=0), 1)
    return (held * saved * (component_demand[nz] / copies)[None, :]).sum(axis=1)


@SCALE_DOWN.register("cache-aware")
class CacheAwareScaleDown:
    """Remove the replicas whose caches are worth least; ties to the shorter queue, then the newest.

    Copies are recounted after each pick, so removing two replicas never removes both holders
    of a component when a cheaper choice exists.
    """

    name: ClassVar[str] = "cache-aware"

    def choose(self, snap: ClusterSnapshot, component_demand: np.ndarray, n: int) -> np.ndarray:
        R = snap.replicas.n
        keep = np.ones(R, dtype=bool)
        out: list[int] = []
        idx = np.arange(R)
        for _ in range(min(max(n, 0), R)):
            sub = _subset(snap, keep)
            value = cache_value(sub, component_demand)
            rows = idx[keep]
            q = snap.replicas.queue_len[rows]
            pick = int(rows[np.lexsort((-rows, q, value))[0]])
            out.append(pick)
            keep[pick] = False
        return np.array(out, dtype=np.int64)


def _subset(snap: ClusterSnapshot, keep: np.ndarray) -> ClusterSnapshot:
    r = snap.replicas
    rep = replace(r, **{f: getattr(r, f)[keep] for f in r.__dataclass_fields__ if getattr(r, f) is not None})
    return ClusterSnapshot(snap.now, rep, snap.components)


@SCALE_DOWN.register("newest-first")
class NewestFirstScaleDown:
    """Cache-blind baseline: the highest-index (most recently added) replicas go first."""

    name: ClassVar[str] = "newest-first"

    def choose(self, snap: ClusterSnapshot, component_demand: np.ndarray, n: int) -> np.ndarray:
        R = snap.replicas.n
        return np.arange(R - 1, R - 1 - min(max(n, 0), R), -1, dtype=np.int64)



def cache_aware_scale_down(snap: ClusterSnapshot, component_demand: np.ndarray, n: int = 1) -> np.ndarray:
    """The ``n`` replicas whose caches are worth least (``CacheAwareScaleDown().choose``)."""
    return CacheAwareScaleDown().choose(snap, component_demand, n)
