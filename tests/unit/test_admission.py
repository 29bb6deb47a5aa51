"""Admission and back-pressure without a cluster: config bounds, the X-Request-Timeout header, the
ingress's 503/504 answers (real FastAPI app under TestClient, fake handles), and late work dropped
by BaseModel (queued) and by the engine's step hook (running) on the tiny real models."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError

from app.admission import InflightLimit, OverloadedError, request_timeout_s
from app.ingress import Ingress, api
from deployments.config import ConfigError, ServeConfig, parse_config
from deployments.errors import DeadlineExceededError, RequestError
from deployments.pipeline_engine import deadline_hook
from deployments.spec import GenerationResult, GenerationSpec
from tests.unit.fake_handles import FakeMethod

MODELS = [{"id": "tiny-base", "kind": "base", "hub_id": "org/tiny", "sizes": ["64x64"]}]
ROUTE = "/v1/images/generations"


# -- config ---------------------------------------------------------------------------------
def test_defaults_bound_every_queue_and_derive_the_deadline_from_the_slo():
    config = ServeConfig(models=MODELS, slo={"latency_s": 5.0})
    assert config.deployments.base_model.max_queued_requests == 64  # bounded, not Ray's -1
    assert config.limits.max_inflight_requests < config.deployments.ingress.max_ongoing_requests
    assert config.request_timeout_s() == 20.0
    assert ServeConfig(models=MODELS, limits={"request_timeout_s": 3}).request_timeout_s() == 3.0


@pytest.mark.parametrize("bad, where", [
    ({"deployments": {"base_model": {"max_queued_requests": -1}}},
     "deployments.base_model.max_queued_requests"),
    ({"deployments": {"ingress": {"max_queued_requests": 0}}}, "deployments.ingress.max_queued_requests"),
    ({"limits": {"request_timeout_s": 0}}, "limits.request_timeout_s"),
    ({"limits": {"retry_after_s": 0}}, "limits.retry_after_s"),
])
def test_out_of_bounds_values_are_refused_by_field(bad, where):
    with pytest.raises(ConfigError, match=where):
        parse_config({"models": MODELS, **bad})


def test_the_ingress_limit_must_leave_room_for_health_checks():
    with pytest.raises(ConfigError, match=r"limits.max_inflight_requests \(8\).*deployments.ingress."
                                          r"max_ongoing_requests \(8\)"):
        parse_config({"models": MODELS, "limits": {"max_inflight_requests": 8},
                      "deployments": {"ingress": {"max_ongoing_requests": 8}}})


# -- header and limit -----------------------------------------------------------------------
def test_the_header_can_only_shorten_the_deadline():
    assert request_timeout_s(None, 20.0) == 20.0
    assert request_timeout_s(" 2.5 ", 20.0) == 2.5
    assert request_timeout_s("0.001", 20.0) == 0.001
    assert request_timeout_s("600", 20.0) == 20.0


@pytest.mark.parametrize("value", ["abc", "", "0", "-1", "nan", "inf", "1e999"])
def test_a_bad_header_is_an_error_naming_it(value):
    with pytest.raises(RequestError) as info:
        request_timeout_s(value, 20.0)
    assert info.value.field == "X-Request-Timeout"


def test_the_inflight_limit_refuses_at_once_and_frees_its_slot():
    limit = InflightLimit(1)
    with limit.admit():
        with pytest.raises(OverloadedError, match="max_inflight_requests"):
            with limit.admit():
                pass
    with pytest.raises(ValueError):
        with limit.admit():
            raise ValueError("a failing request")
    assert limit.inflight == 0


# -- the ingress's answers ------------------------------------------------------------------
class FakeBaseModel:
    """BaseModel's handle: `generate` runs `behaviour(spec)`; the specs it got are kept."""

    def __init__(self, behaviour):
        self.specs: list[GenerationSpec] = []

        async def generate(spec, _controls):
            self.specs.append(spec)
            return await behaviour(spec)

        async def ready():
            return {}

        self.generate, self.ready = FakeMethod(generate), FakeMethod(ready)

    def options(self, **_):
        return self


async def _image(_spec) -> GenerationResult:
    return GenerationResult(images=[np.zeros((64, 64, 3), np.uint8)])


def _ray_wrapped(cause: Exception) -> Exception:
    return RayTaskError("handle_request", "Traceback ...", cause).as_instanceof_cause()


@pytest.fixture
def serve(monkeypatch):
    import ray.serve

    def client_for(behaviour, **limits) -> tuple[TestClient, Ingress, FakeBaseModel]:
        base = FakeBaseModel(behaviour)
        ingress = Ingress(ServeConfig(models=MODELS, limits={"retry_after_s": 2, **limits}), base)
        monkeypatch.setattr(ray.serve, "get_replica_context",
                            lambda: SimpleNamespace(servable_object=ingress))
        return TestClient(api, raise_server_exceptions=False), ingress, base

    return client_for


def _error(response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and "\n" not in error["message"]
    return error


def test_the_deadline_travels_in_the_spec(serve):
    client, _, base = serve(_image, request_timeout_s=10)
    before = time.time()
    assert client.post(ROUTE, json={"prompt": "a"}, headers={"X-Request-Timeout": "2"}).status_code == 200
    assert before + 2 <= base.specs[0].deadline <= time.time() + 2


def test_a_bad_timeout_header_is_a_400_naming_it(serve):
    client, _, base = serve(_image)
    error = _error(client.post(ROUTE, json={"prompt": "a"}, headers={"X-Request-Timeout": "soon"}),
                   400, "invalid_request_error")
    assert error["param"] == "X-Request-Timeout" and base.specs == []


def test_over_the_inflight_limit_is_a_503_with_retry_after_before_any_work(serve):
    client, ingress, base = serve(_image, max_inflight_requests=3)
    ingress.inflight.inflight = 3  # three requests are being served
    response = client.post(ROUTE, json={"prompt": "a"})
    assert "max_inflight_requests" in _error(response, 503, "overloaded_error")["message"]
    assert response.headers["Retry-After"] == "2" and base.specs == []
    assert client.get("/v1/models").status_code == 200  # the limit is the generation route's
    ingress.inflight.inflight = 2
    assert client.post(ROUTE, json={"prompt": "a"}).status_code == 200
    assert ingress.inflight.inflight == 2


@pytest.mark.parametrize("wrap", [lambda e: e, _ray_wrapped])
@pytest.mark.parametrize("retry_after_s, header", [(None, "2"), (2.5, "3")])
def test_a_full_deployment_queue_is_a_503_with_retry_after(serve, wrap, retry_after_s, header):
    async def full(_spec):
        raise wrap(BackPressureError(num_queued_requests=1, max_queued_requests=1,
                                     retry_after_s=retry_after_s))

    client, ingress, _ = serve(full)
    response = client.post(ROUTE, json={"prompt": "a"})
    assert "queue is full" in _error(response, 503, "overloaded_error")["message"]
    assert response.headers["Retry-After"] == header and ingress.inflight.inflight == 0


def test_work_dropped_by_base_model_is_a_504_saying_where(serve):
    async def late(_spec):
        raise _ray_wrapped(DeadlineExceededError("queued", 0.25))

    client, _, _ = serve(late)
    message = _error(client.post(ROUTE, json={"prompt": "a"}), 504, "deadline_exceeded")["message"]
    assert "deadline passed while queued" in message and "X-Request-Timeout" in message
    assert "Traceback" not in message


def test_the_ingress_stops_waiting_on_a_stuck_call_at_the_deadline(serve):
    cancelled = asyncio.Event()

    async def stuck(_spec):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    client, ingress, _ = serve(stuck)
    started = time.perf_counter()
    response = client.post(ROUTE, json={"prompt": "a"}, headers={"X-Request-Timeout": "0.05"})
    elapsed = time.perf_counter() - started
    assert "waited on at the ingress" in _error(response, 504, "deadline_exceeded")["message"]
    assert elapsed < 0.05 + Ingress.DEADLINE_GRACE_S + 1.0
    assert cancelled.is_set() and ingress.inflight.inflight == 0  # the call was cancelled


# -- late work dropped where it runs --------------------------------------------------------
def test_the_step_hook_stops_denoising_once_the_deadline_passed():
    clock = iter([9.0, 10.0, 10.5])
    hook = deadline_hook(10.0, clock=lambda: next(clock))
    kwargs = {"latents": object()}
    assert hook(None, 0, 999, kwargs) is kwargs and hook(None, 1, 998, kwargs) is kwargs
    with pytest.raises(DeadlineExceededError) as info:
        hook(None, 2, 997, kwargs)
    assert info.value.where == "running" and info.value.overdue_s == pytest.approx(0.5)


def _spec(**overrides) -> GenerationSpec:
    values = dict(prompt="a small boat", base_model="tiny-sd-light", width=32, height=32, steps=2,
                  guidance_scale=5.0, seed=7)
    return GenerationSpec(**{**values, **overrides})


def test_the_engine_wires_the_hook_into_the_pipeline(demo_config):
    from deployments.pipeline_engine import PipelineEngine

    engine = PipelineEngine(demo_config, device="cpu")
    loaded = engine.load_pipeline("tiny-sd-light")
    with pytest.raises(DeadlineExceededError, match="while running"):
        engine.generate(loaded, _spec(deadline=time.time() - 1))
    assert engine.generate(loaded, _spec(deadline=time.time() + 60)).images  # in time: served


def test_base_model_drops_a_request_whose_deadline_passed_in_its_queue(demo_config):
    from deployments.base_model import BaseModel

    async def main():
        model = BaseModel(demo_config)
        async with model._lock:  # another request runs: this one waits past its deadline
            waiting = asyncio.ensure_future(model.generate(_spec(deadline=time.time() + 0.1)))
            await asyncio.sleep(0.3)
        with pytest.raises(DeadlineExceededError) as info:
            await waiting
        assert info.value.where == "queued"
        # it only loaded ahead while queued (control.load_ahead): it never took the replica
        assert model.cache.counters()["ahead"] == {"started": 1, "used": 0, "wasted": 0}
        assert model.control.in_flight == []  # and it left the replica's queue
        with pytest.raises(DeadlineExceededError, match="while queued"):  # late on arrival
            await model.generate(_spec(deadline=time.time() - 1))
        assert (await model.generate(_spec(deadline=time.time() + 60))).images

    asyncio.run(main())
