"""The BaseModel autoscaler as the Serve controller runs it: Ray's own ``AutoscalingContext``
objects, the policy built from ``autoscaling_options`` through Ray's deserialize-and-instantiate
path, wrapped by Ray's ``_apply_autoscaling_config`` (factors and Ray's delays) and clipped as
``apply_bounds`` does. Time is simulated; nothing here sleeps."""

from __future__ import annotations

import json
import math

import pytest
from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig
from ray.serve.config import AutoscalingContext as RayContext

from deployments.autoscaling import (STATE_KEY, BaseModelAutoscaler, autoscaling_options, replica_metrics,
                                     to_policy_context)
from deployments.config import parse_config

DEP = DeploymentID(name="BaseModel", app_name="t2i")


def rid(name: str) -> ReplicaID:
    return ReplicaID(unique_id=name, deployment_id=DEP)


def serve_config(policy: str = "ewma-headroom", policy_args: dict | None = None, min_r: int = 1, max_r: int = 4,
                 up: float = 3.0, down: float = 5.0, hysteresis: float = 0.1, policies: str = "coordinator"):
    return parse_config({
        "models": [{"id": "m", "kind": "base", "path": "m"}],
        "deployments": {"base_model": {"autoscaling": {"min_replicas": min_r, "max_replicas": max_r}}},
        "control": {"policies": policies, "report_period_s": 1.0, "autoscaling": {
            "policy": policy, "policy_args": policy_args or {}, "upscale_delay_s": up,
            "downscale_delay_s": down, "hysteresis": hysteresis}}})


def ray_config(config) -> AutoscalingConfig:
    with pytest.warns(DeprecationWarning):  # metrics_interval_s != 10 (still what Ray uses)
        return AutoscalingConfig(**autoscaling_options(config)["autoscaling_config"])


def ray_ctx(now: float, target: int, stats: dict[str, dict], state: dict | None = None, current: int | None = None,
            ray_total: float = 0.0, queued: float = 0.0, config: AutoscalingConfig | None = None,
            bounds: tuple[int, int] = (1, 4)) -> RayContext:
    """A context as the controller builds it: ``stats`` = {replica: S2 metrics}; requests_total goes
    to raw_metrics as one sample, the rest to aggregated_metrics (window means)."""
    running = [rid(r) for r in stats]
    aggregated: dict = {}
    raw: dict = {}
    for r, metrics in stats.items():
        for name, value in metrics.items():
            if name == "requests_total":
                series = [TimeStampedValue(now - 2.0, 0.0), TimeStampedValue(now - 0.5, value)]
                raw.setdefault(name, {})[rid(r)] = series
            elif name == "cascade_replicas":  # a target, read from its newest sample as Ray keeps it
                raw.setdefault(name, {})[rid(r)] = [TimeStampedValue(now - 0.5, value)]
                aggregated.setdefault(name, {})[rid(r)] = value
            else:
                aggregated.setdefault(name, {})[rid(r)] = value
    return RayContext(deployment_id=DEP, deployment_name=DEP.name, app_name=DEP.app_name,
                      current_num_replicas=len(running) if current is None else current, target_num_replicas=target,
                      running_replicas=running, total_num_requests=ray_total, total_queued_requests=queued,
                      aggregated_metrics=aggregated, raw_metrics=raw, capacity_adjusted_min_replicas=bounds[0],
                      capacity_adjusted_max_replicas=bounds[1], policy_state=state or {}, last_scale_up_time=None,
                      last_scale_down_time=None, current_time=now, config=config)


class Controller:
    """The controller's loop for one deployment: Ray's wrapper, then its bounds; running = target."""

    def __init__(self, config, target: int = 1) -> None:
        self.cfg = ray_config(config)
        self.policy = _apply_autoscaling_config(_resolve_policy_callable(self.cfg.policy))
        self.target, self.state, self.counts = target, {}, {}
        self.history: list[tuple[float, int]] = []
        self.wish_since: float | None = None  # when Guardrails' pending move began (its timer)

    def tick(self, now: float, rate_per_replica: float = 0.0, queue: float = 0.0, service_s: float = 1.0,
             cascade: float | None = None) -> int:
        stats = {}
        for i in range(self.target):
            name = f"r{i}"
            self.counts[name] = self.counts.get(name, 0.0) + rate_per_replica * 0.1
            stats[name] = {"queue_len": queue, "loads_in_progress": 0.0, "service_s": service_s,
                           "requests_total": math.floor(self.counts[name])}
            if cascade is not None:
                stats[name]["cascade_replicas"] = cascade
        ctx = ray_ctx(now, self.target, stats, self.state, ray_total=queue * self.target, config=self.cfg,
                      bounds=(self.cfg.min_replicas, self.cfg.max_replicas))
        decision, self.state = self.policy(ctx)
        self.target = max(self.cfg.min_replicas, min(self.cfg.max_replicas, math.ceil(decision)))
        self.history.append((now, self.target))
        since = self.guard().get("since")
        if since is not None:
            self.wish_since = since
        return self.target

    def run(self, start: float, seconds: float, **load) -> float:
        steps = round(seconds / 0.1)
        for k in range(steps):
            self.tick(round(start + k * 0.1, 6), **load)
        return round(start + steps * 0.1, 6)

    def guard(self) -> dict:
        return self.state[STATE_KEY]["policy"].get("_guard", {})


def first_change(history, after: float, frm: int) -> tuple[float, int]:
    return next((t, n) for t, n in history if t >= after and n != frm)


def test_a_burst_scales_up_after_the_upscale_delay_applied_once():
    c = Controller(serve_config(up=3.0), target=1)
    t = c.run(0.0, 5.0)  # idle
    assert c.target == 1 and c.wish_since is None
    t_burst = t
    c.run(t, 12.0, rate_per_replica=8.0, queue=6.0)  # 8 req/s x 1 s each: wants ~10 replicas
    when, n = first_change(c.history, t_burst, 1)
    assert n == 4  # straight to max_replicas
    assert t_burst <= c.wish_since <= t_burst + 2.0  # the wish began with the burst (EWMA warm-up)
    # applied once: Guardrails' 3 s from the first tick that wanted more, give or take one
    # 1 s decision tick; not 3 s + Ray's own delay on top (autoscaling_options sets Ray's to 0)
    assert 3.0 - 1e-6 <= when - c.wish_since <= 3.0 + 1.0
    assert c.cfg.upscale_delay_s == 0 and c.cfg.downscale_delay_s == 0


def test_quiet_scales_down_after_the_downscale_delay_to_min():
    c = Controller(serve_config(down=5.0, min_r=1), target=4)
    t = c.run(0.0, 3.0, rate_per_replica=8.0, queue=6.0)
    assert c.target == 4
    t_quiet = t
    c.run(t, 25.0)  # no arrivals, empty queues: the EWMA decays, then the delay runs
    when, n = first_change(c.history, t_quiet, 4)
    assert n == 1  # one step to min_replicas (downscaling factor 1)
    assert t_quiet <= c.wish_since and 5.0 - 1e-6 <= when - c.wish_since <= 5.0 + 1.0
    assert c.target == 1


def test_the_cascade_plans_stage_replicas_are_a_floor_under_the_guardrails():
    c = Controller(serve_config(up=3.0, down=5.0, max_r=4), target=1)
    t = c.run(0.0, 5.0)  # idle, no plan
    assert c.target == 1
    t_plan = t
    t = c.run(t, 6.0, cascade=3.0)  # idle, but the plan's stages want 3 replicas
    when, n = first_change(c.history, t_plan, 1)
    assert n == 3 and 3.0 - 1e-6 <= when - t_plan <= 3.0 + 1.0  # after the upscale delay, not at once
    t = c.run(t, 10.0, cascade=3.0)
    assert c.target == 3  # quiet queues do not take the stages' replicas away
    c.run(t, 10.0, cascade=9.0)
    assert c.target == 4  # never past max_replicas
    c.run(t + 10.0, 20.0, cascade=0.0)  # the plan gone: quiet scales down again
    assert c.target == 1


def test_bounds_hold_under_any_load():
    c = Controller(serve_config(min_r=2, max_r=3, up=0.0, down=0.0), target=2)
    t = c.run(0.0, 5.0, rate_per_replica=100.0, queue=50.0)
    assert max(n for _, n in c.history) == 3
    c.run(t, 30.0)  # the EWMA forgets 300 req/s in ~20 ticks
    assert min(n for _, n in c.history) == 2 and c.target == 2


def test_capacity_adjusted_bounds_from_ray_are_the_guardrails():
    policy = BaseModelAutoscaler(policy="ray-queue-length", upscale_delay_s=0.0, downscale_delay_s=0.0)
    ctx = ray_ctx(10.0, 2, {"a": {"queue_len": 40.0}, "b": {"queue_len": 40.0}}, bounds=(1, 3))
    assert policy(ctx)[0] == 3  # 80 requests / 2 per replica wants 40; Ray says at most 3


def test_hysteresis_holds_a_target_inside_the_dead_band():
    policy = BaseModelAutoscaler(policy="ray-queue-length", upscale_delay_s=1.0, downscale_delay_s=1.0,
                                 hysteresis=0.1)
    state, target = {}, 2
    for k in range(40):  # 4.2 requests / 2 per replica = 2.1 replicas: inside 2 x (1 +/- 0.1)
        requests = 4.2 if k % 2 else 3.7  # and 1.85: inside too
        stats = {"a": {"queue_len": requests / 2}, "b": {"queue_len": requests / 2}}
        target, state = policy(ray_ctx(float(k), target, stats, state))
        assert target == 2
    stats = {"a": {"queue_len": 2.5}, "b": {"queue_len": 2.5}}  # 2.5 replicas: outside the band
    for k in range(40, 43):
        target, state = policy(ray_ctx(float(k), target, stats, state))
    assert target == 3


def test_state_round_trips_through_policy_state_and_is_plain_json():
    policy = BaseModelAutoscaler(policy="ray-queue-length", upscale_delay_s=2.0)
    stats = {"a": {"queue_len": 10.0, "requests_total": 5.0}}
    target, state = policy(ray_ctx(0.0, 1, stats, {"__decision_counters": 0}))
    assert target == 1 and state["__decision_counters"] == 0  # Ray's keys are left as they were
    assert state[STATE_KEY]["policy"]["_guard"]["since"] == 0.0
    assert state[STATE_KEY]["adapter"]["counts"] == {"a": 5.0}
    json.dumps(state)
    # between ticks (< tick_s): the current target, the state untouched
    assert policy(ray_ctx(0.5, 1, stats, state)) == (1, state)
    # the timer lives only in the state: without it the delay starts over and nothing moves
    assert policy(ray_ctx(2.0, 1, stats, {}))[0] == 1
    assert policy(ray_ctx(2.0, 1, stats, state))[0] == 4  # with it: 2 s after the first wish


def test_arrival_rate_service_time_and_total_come_from_the_replicas_metrics():
    before = {"t": 10.0, "counts": {"a": 10.0, "c": 50.0, "d": 7.0}, "service_s": 9.0, "queued": 2.0}
    stats = {"a": {"requests_total": 15.0, "service_s": 2.0, "queue_len": 3.0, "loads_in_progress": 1.0},
             "b": {"requests_total": 3.0, "service_s": 4.0, "queue_len": 1.0},  # new replica: all 3 new
             "d": {"requests_total": 2.0, "queue_len": 0.0}}  # its counter restarted: 2 new
    ctx = ray_ctx(12.0, 3, stats, ray_total=4.0, queued=6.0)
    policy_ctx, after = to_policy_context(ctx, replica_metrics(ctx), before, 1.0)
    assert policy_ctx.arrival_rate == pytest.approx((5 + 3 + 2 + (6 - 2)) / 2.0)  # + handle queue growth
    assert policy_ctx.service_time_s == pytest.approx((2.0 * 15 + 4.0 * 3) / 18)
    assert policy_ctx.total_num_requests == pytest.approx(3 + 1 + 1 + 0 + 6)  # > Ray's 4
    assert after["counts"] == {"a": 15.0, "b": 3.0, "d": 2.0}  # c is gone
    quiet = ray_ctx(13.0, 3, {"a": {"queue_len": 0.0}}, ray_total=4.0)
    policy_ctx, later = to_policy_context(quiet, replica_metrics(quiet), after, 1.0)
    assert policy_ctx.service_time_s == pytest.approx(after["service_s"])  # last known while idle
    assert policy_ctx.total_num_requests == 4.0  # Ray's count when it is the larger
    assert policy_ctx.arrival_rate == 0.0  # no growth; the handle queue drained (6 -> 0) is not negative
    assert later["counts"] == {"a": 15.0}  # a's count kept while it does not report one


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -3.0, "7", True, None])
def test_bad_metrics_are_ignored_not_fatal(bad):
    policy = BaseModelAutoscaler(policy="ray-queue-length", upscale_delay_s=0.0)
    stats = {"a": {"queue_len": bad, "requests_total": bad, "service_s": bad, "loads_in_progress": bad},
             "b": {"queue_len": 6.0, "requests_total": 4.0}}
    ctx = ray_ctx(0.0, 1, stats, ray_total=1.0)
    metrics = replica_metrics(ctx)
    assert metrics["a"] == {} and metrics["b"] == {"queue_len": 6.0, "requests_total": 4.0}
    target, state = policy(ctx)
    assert target == 3  # b's 6 requests / 2 per replica
    assert state[STATE_KEY]["adapter"]["counts"] == {"b": 4.0}


def test_missing_metrics_fall_back_to_rays_count_and_odd_shapes_are_ignored():
    policy = BaseModelAutoscaler(policy="ray-queue-length", upscale_delay_s=0.0)
    ctx = ray_ctx(0.0, 1, {"a": {}}, ray_total=8.0)
    ctx._aggregated_metrics_value = None  # a replica whose record_autoscaling_stats was disabled
    ctx._raw_metrics_value = {"requests_total": {rid("a"): "garbage"}, "queue_len": ["not", "a", "dict"]}
    assert policy(ctx)[0] == 4


def test_a_failing_policy_holds_the_target():
    policy = BaseModelAutoscaler(policy="ray-queue-length")
    policy.policy = lambda ctx: (float("nan"), {})  # Guardrails rejects a NaN forecast
    target, state = policy(ray_ctx(0.0, 2, {"a": {"queue_len": 9.0}}, {"x": 1}))
    assert (target, state) == (2, {"x": 1})


def test_options_none_without_bounds_and_ray_default_is_rays_policy():
    raw = serve_config().model_dump()
    raw["deployments"]["base_model"]["autoscaling"] = None
    assert autoscaling_options(parse_config(raw)) is None
    plain = autoscaling_options(serve_config(policies="ray-default"))["autoscaling_config"]
    assert plain == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.0}
    assert AutoscalingConfig(**plain).policy.is_default_policy_function()


def test_options_build_the_policy_through_rays_own_path():
    config = serve_config(policy="ray-queue-length", up=7.0, down=70.0, hysteresis=0.2)
    cfg = ray_config(config)
    assert (cfg.metrics_interval_s, cfg.look_back_period_s) == (1.0, 5.0)
    assert (cfg.upscale_delay_s, cfg.downscale_delay_s) == (0.0, 0.0)
    assert cfg.get_upscaling_factor() == cfg.get_downscaling_factor() == 1.0  # identity on our integer target
    assert cfg.policy.policy_function == "deployments.autoscaling:BaseModelAutoscaler"
    json.dumps(cfg.policy.policy_kwargs)
    policy = _resolve_policy_callable(cfg.policy)
    assert isinstance(policy, BaseModelAutoscaler)
    assert policy.delays == {"upscale_delay_s": 7.0, "downscale_delay_s": 70.0, "hysteresis": 0.2}
    assert policy.tick_s == 1.0
    assert cfg.policy.policy_kwargs["policy_args"] == {"target_ongoing_requests": 2.0}
