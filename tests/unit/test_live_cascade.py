"""The live cascade plan: the coordinator's planner adapter (deployments/live_cascade.py), its
stage pins and view in the coordinator, and the ingress's client (app/cascade_client.py)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from app.cascade_client import FALLBACK_AFTER, CascadeClient
from deployments.config import ServeConfig
from deployments.coordinator import CacheCoordinator
from deployments.live_cascade import MIN_SCORES, LiveCascade
from tests.unit.fake_handles import FakeHandle, FakeMethod


def raw(**cascade) -> dict:
    return {"models": [{"id": "light", "kind": "base", "size_bytes": 1 << 30, "path": "l"},
                       {"id": "heavy", "kind": "base", "size_bytes": 2 << 30, "path": "h"},
                       {"id": "disc", "kind": "discriminator", "path": "d"}],
            "slo": {"latency_s": 5.0},
            "control": {"report_period_s": 1.0},
            "cascade": {"light": "light", "heavy": "heavy", "discriminator": "disc", "threshold": 0.4,
                        **cascade}}


def scores(n: int, seed: int = 0) -> list[float]:
    return np.random.default_rng(seed).random(n).tolist()


def feed(lc: LiveCascade, rate_qps: float, seconds: int, start: float = 0.0, gpus: int = 4,
         light_s: float = 0.3, heavy_s: float = 1.0) -> dict:
    """One report a second at ``rate_qps`` arrivals, each with its score and service times."""
    plan = {}
    for k in range(seconds):
        n = int(rate_qps)
        plan = lc.report(start + k + 1, {"arrivals": n, "scores": scores(n, k), "light_s": [light_s] * n,
                                          "heavy_s": [heavy_s] * max(n // 2, 1), "answered_light": n}, gpus)
    return plan


def test_the_config_threshold_holds_until_there_are_measurements():
    lc = LiveCascade(ServeConfig.model_validate(raw()), start_s=0.0)
    plan = lc.report(1.0, {"arrivals": 3, "scores": scores(MIN_SCORES - 1), "light_s": [0.3], "heavy_s": [1.0]}, 4)
    assert plan["source"] == "config" and plan["threshold"] == 0.4 and plan["light_replicas"] is None
    plan = lc.report(2.0, {"arrivals": 3, "scores": scores(1, 9)}, 4)
    assert plan["source"] == "planner"


def test_the_plan_defers_less_as_demand_rises_and_the_cutoff_is_the_scores_quantile():
    low = LiveCascade(ServeConfig.model_validate(raw()), start_s=0.0)
    quiet = feed(low, rate_qps=1, seconds=40)
    high = LiveCascade(ServeConfig.model_validate(raw()), start_s=0.0)
    busy = feed(high, rate_qps=6, seconds=40)
    assert quiet["source"] == busy["source"] == "planner"
    # 4 replicas, light 0.3 s, heavy 1.0 s: at 1 qps every query can go to the heavy model; at 6 qps
    # the heavy stage cannot take them all
    assert quiet["deferred_fraction"] == 1.0
    assert busy["deferred_fraction"] < quiet["deferred_fraction"]
    assert busy["light_replicas"] + busy["heavy_replicas"] <= 4
    assert busy["threshold"] == pytest.approx(np.quantile(np.fromiter(high.scores, float), busy["deferred_fraction"]))
    assert busy["demand_qps"] >= 6.0  # planned with headroom over the measured rate


def test_a_new_replica_count_is_planned_for_with_the_demand_kept():
    lc = LiveCascade(ServeConfig.model_validate(raw()), start_s=0.0)
    feed(lc, rate_qps=6, seconds=20, gpus=2)
    two = lc.plan()
    plan = feed(lc, rate_qps=6, seconds=20, start=20, gpus=8)
    assert plan["gpus"] == 8 and plan["light_replicas"] + plan["heavy_replicas"] > two["light_replicas"] + two["heavy_replicas"]


@pytest.mark.parametrize("report, field", [({"arrivals": -1}, "arrivals"), ({"answered_heavy": float("nan")}, "answered_heavy"),
                                           ({"answered_light": "3"}, "answered_light")])
def test_a_bad_report_is_refused_naming_the_field(report, field):
    lc = LiveCascade(ServeConfig.model_validate(raw()), start_s=0.0)
    with pytest.raises(ValueError, match=field):
        lc.report(1.0, report, 4)


def test_out_of_range_samples_are_ignored():
    lc = LiveCascade(ServeConfig.model_validate(raw()), start_s=0.0)
    lc.report(1.0, {"scores": [0.5, 1.5, -0.1, float("nan"), "x"], "light_s": [0.0, -1.0, 0.2], "heavy_s": [float("inf")]}, 4)
    assert list(lc.scores) == [0.5] and list(lc.light_s) == [0.2] and not lc.heavy_s


def test_the_coordinator_pins_each_stage_on_the_replicas_the_plan_gives_it():
    now = [0.0]
    co = CacheCoordinator(raw(), clock=lambda: now[0])
    for rid in ("r0", "r1", "r2", "r3"):
        co.report(rid, {"t": 0.0, "tiers": {}, "queue_len": 1, "loading": [], "gpu_free_bytes": 8 << 30})
    for k in range(30):
        now[0] = k + 1.0
        for rid in ("r0", "r1", "r2", "r3"):  # replicas keep reporting, so none is forgotten
            co.report(rid, {"t": now[0], "tiers": {}, "queue_len": 1, "loading": [], "gpu_free_bytes": 8 << 30})
        co.cascade_report({"arrivals": 6, "scores": scores(6, k), "light_s": [0.3] * 6, "heavy_s": [1.0] * 3})
    view = co.cascade_view()
    assert view["source"] == "planner" and view["gpus"] == 4
    light, heavy = view["stages"]["light"], view["stages"]["heavy"]
    assert len(light) == view["light_replicas"] and len(heavy) == view["heavy_replicas"]
    assert not set(light) & set(heavy)
    actions = co.report(light[0], {"t": now[0], "tiers": {}, "queue_len": 1, "loading": [], "gpu_free_bytes": 8 << 30})
    assert "light" in actions["pins"] and "heavy" not in actions["pins"]


def test_no_planner_when_the_cascade_is_fixed():
    co = CacheCoordinator(raw(planner="fixed"))
    with pytest.raises(RuntimeError, match="planner is fixed"):
        co.cascade_report({"arrivals": 1})


# -- the ingress's client ------------------------------------------------------------------------
def client(plan: dict | None = None, fail: bool = False, policies: str = "coordinator"):
    cfg = ServeConfig.model_validate({**raw(), "control": {"policies": policies}})
    sent = []

    async def call(report):
        sent.append(report)
        if fail:
            raise ConnectionError("coordinator away")
        return plan

    now = [100.0]
    c = CascadeClient(cfg, call, clock=lambda: now[0])
    return c, sent, now


def test_the_client_reports_what_it_saw_once_and_takes_the_plan():
    plan = {"source": "planner", "threshold": 0.7, "heavy_replicas": 2, "heavy_service_s": 1.0}
    c, sent, _ = client(plan)
    c.arrived(), c.arrived()
    c.light_done(0.4, 0.1, [0.2, 0.9])
    c.answered(light=1, heavy=1)
    asyncio.run(c.report_once())
    assert sent[0]["arrivals"] == 2 and sent[0]["scores"] == [0.2, 0.9] and sent[0]["queue_delay_s"] == 0.1
    assert c.threshold == 0.7
    asyncio.run(c.report_once())
    assert sent[1]["arrivals"] == 0 and sent[1]["scores"] == []


def test_a_low_score_stays_light_when_the_heavy_stage_would_miss_the_slo():
    plan = {"source": "planner", "threshold": 0.7, "heavy_replicas": 1, "heavy_service_s": 1.0}
    c, _, now = client(plan)
    asyncio.run(c.report_once())
    assert c.defer(0.5, arrived_at=now[0])  # below the cutoff, heavy idle: 1 s fits the 5 s SLO
    assert not c.defer(0.8, arrived_at=now[0])  # above the cutoff
    c.heavy_inflight = 6  # 6 s of heavy work ahead on one replica
    assert not c.defer(0.5, arrived_at=now[0])


def test_the_config_threshold_returns_when_the_coordinator_is_away():
    c, _, _ = client({"source": "planner", "threshold": 0.9}, fail=False)
    asyncio.run(c.report_once())
    assert c.threshold == 0.9
    c.call = client(fail=True)[0].call
    for _ in range(FALLBACK_AFTER - 1):
        asyncio.run(c.report_once())
    assert c.threshold == 0.9  # a short absence keeps the last plan
    asyncio.run(c.report_once())
    assert c.threshold == 0.4 and c.plan["source"] == "config"


def test_the_client_is_off_under_ray_default_and_with_a_fixed_planner():
    assert not client(policies="ray-default")[0].enabled
    cfg = ServeConfig.model_validate(raw(planner="fixed"))
    assert not CascadeClient(cfg, None).enabled
    assert client()[0].enabled


def test_with_autoscaling_the_plan_spans_max_replicas_and_its_stages_reach_the_replicas():
    now = [0.0]
    doc = {**raw(), "deployments": {"base_model": {"autoscaling": {"min_replicas": 1, "max_replicas": 6}}}}
    co = CacheCoordinator(doc, clock=lambda: now[0])
    rep = {"t": 0.0, "tiers": {}, "queue_len": 1, "loading": [], "gpu_free_bytes": 8 << 30}
    assert co.report("r0", rep)["cascade_replicas"] == 0  # no plan yet: no floor
    for k in range(30):
        now[0] = k + 1.0
        co.report("r0", {**rep, "t": now[0]})
        co.cascade_report({"arrivals": 3, "scores": scores(3, k), "light_s": [0.3] * 3, "heavy_s": [1.0] * 2})
    plan = co.cascade_view()
    assert plan["gpus"] == 6  # max_replicas, not the one replica reporting
    # spare GPUs are not spread: the stages' sum is what the demand needs, and the autoscaler's floor
    assert 2 <= plan["light_replicas"] + plan["heavy_replicas"] < 6
    assert co.report("r0", {**rep, "t": now[0]})["cascade_replicas"] == plan["light_replicas"] + plan["heavy_replicas"]


def test_planner_replicas_caps_what_the_plan_may_count_as_parallel():
    now = [0.0]
    co = CacheCoordinator(raw(planner_replicas=2), clock=lambda: now[0])
    rep = {"t": 0.0, "tiers": {}, "queue_len": 1, "loading": [], "gpu_free_bytes": 8 << 30}
    for k in range(30):
        now[0] = k + 1.0
        for rid in ("r0", "r1", "r2", "r3"):
            co.report(rid, {**rep, "t": now[0]})
        co.cascade_report({"arrivals": 2, "scores": scores(2, k), "light_s": [0.3] * 2, "heavy_s": [1.0]})
    plan = co.cascade_view()
    assert plan["gpus"] == 2 and plan["light_replicas"] + plan["heavy_replicas"] == 2


# -- the ingress's cascade path with fake handles ---------------------------------------------------
class _BaseModel:
    """Light images at once; heavy ones after `heavy_s` (cancellations recorded)."""

    def __init__(self, heavy_s: float) -> None:
        self.heavy_s, self.cancelled, self.plan = heavy_s, 0, None
        self.generate = FakeMethod(self._generate)
        self.coordinator_call = FakeMethod(self._coordinator)
        self.ready = FakeMethod(self._coordinator)

    async def _generate(self, spec, _controls):
        from deployments.spec import GenerationResult
        if spec.base_model == "heavy":
            try:
                await asyncio.sleep(self.heavy_s)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return GenerationResult(images=[np.full((8, 8, 3), 200 if spec.base_model == "heavy" else 10, np.uint8)] * spec.n,
                                timings={"inference_s": 0.01, "queue_s": 0.0})

    async def _coordinator(self, *_):
        return self.plan

    def options(self, **_):
        return self


def _discriminator(score: float) -> FakeHandle:
    async def score_fn(images, _disc):
        return [score] * len(images)
    return FakeHandle(score=score_fn)


def _ingress(heavy_s: float, slo_s: float, score: float = 0.1):
    from app.ingress import Ingress
    from app.schemas import ImageGenerationRequest
    doc = {**raw(), "models": [{"id": "light", "kind": "base", "path": "l", "sizes": ["8x8"]},
                               {"id": "heavy", "kind": "base", "path": "h", "sizes": ["8x8"]},
                               {"id": "disc", "kind": "discriminator", "path": "d"}],
           "slo": {"latency_s": slo_s}}
    base = _BaseModel(heavy_s)
    ingress = Ingress(ServeConfig.model_validate(doc), base, discriminator=_discriminator(score))
    base.plan = {"source": "planner", "threshold": 0.5, "heavy_replicas": 1, "heavy_service_s": 0.01}
    return ingress, base, ImageGenerationRequest


def test_a_deferred_image_not_back_by_the_slo_is_answered_light():
    async def scenario():
        ingress, base, Request = _ingress(heavy_s=5.0, slo_s=0.3)
        await ingress.cascade_plan.report_once()  # the planner's plan reaches the ingress
        started = time.monotonic()
        response, _ = await ingress.generate(Request(prompt="p", cascade=True, n=2, size="8x8"))
        took = time.monotonic() - started
        await asyncio.sleep(0)  # let the cancellations land
        return response, took, base, ingress

    response, took, base, ingress = asyncio.run(scenario())
    info = response["t2i"]["cascade"]
    assert info["threshold_source"] == "planner" and info["deferred"] == [] and info["kept_for_slo"] == [0, 1]
    assert info["answered_by"] == ["light", "light"] and response["model"] == "light"
    assert took < 2.0 and base.cancelled == 2 and ingress.cascade_plan.heavy_inflight == 0


def test_a_deferred_image_back_in_time_is_the_heavy_models():
    async def scenario():
        ingress, base, Request = _ingress(heavy_s=0.05, slo_s=5.0)
        await ingress.cascade_plan.report_once()
        response, _ = await ingress.generate(Request(prompt="p", cascade=True, size="8x8"))
        return response, ingress

    response, ingress = asyncio.run(scenario())
    info = response["t2i"]["cascade"]
    assert info["deferred"] == [0] and info["kept_for_slo"] == [] and response["model"] == "heavy"
    assert ingress.cascade_plan.answered_heavy == 1 and ingress.cascade_plan.heavy_s == [0.01]


def test_get_v1_cascade_names_why_the_planner_is_off_and_404s_without_a_cascade():
    from app.ingress import CascadeOffError, Ingress

    async def view(doc):
        base = _BaseModel(0.0)
        base.plan = {"source": "planner", "threshold": 0.3}
        return await Ingress(ServeConfig.model_validate(doc), base, discriminator=_discriminator(0.5)).cascade()

    on = asyncio.run(view(raw()))
    assert on["planner"] == "demand" and on["plan"]["threshold"] == 0.3  # the coordinator's view
    fixed = asyncio.run(view(raw(planner="fixed")))
    assert fixed["planner"] == "off" and "cascade.planner: fixed" in fixed["why"]
    assert fixed["plan"] == {"source": "config", "threshold": 0.4}
    ray = asyncio.run(view({**raw(), "control": {"policies": "ray-default"}}))
    assert ray["planner"] == "off" and "ray-default" in ray["why"]
    none = {**raw(), "cascade": {}}
    with pytest.raises(CascadeOffError):
        asyncio.run(view(none))
