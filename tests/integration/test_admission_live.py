"""Admission over real HTTP on the session's Serve instance: a deadline shorter than any work is
a 504 and the service keeps serving; a burst against a deployment whose queue holds one request
is shed as 503s with Retry-After (Ray's BackPressureError through the real ingress), never
another 5xx. The burst runs against a second, model-free application (the real ingress over a
slow stand-in for BaseModel), so the session's service keeps its own queue bounds."""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from deployments.spec import GenerationResult

pytestmark = pytest.mark.integration

APP, PREFIX = "admission-test", "/admission-test"


class SlowModel:
    """A BaseModel stand-in: each generation holds its only slot for 0.5 s."""

    async def ready(self) -> dict:
        return {}

    async def generate(self, spec, control_images=None) -> GenerationResult:
        await asyncio.sleep(0.5)
        return GenerationResult(images=[np.zeros((spec.height, spec.width, 3), np.uint8)])


def test_a_deadline_shorter_than_the_work_is_a_504_and_the_service_keeps_serving(http):
    late = http.post("/v1/images/generations", json={"prompt": "a tiny red house"},
                     headers={"X-Request-Timeout": "0.001"})
    assert late.status_code == 504, late.text
    error = late.json()["error"]
    assert error["type"] == "deadline_exceeded" and "deadline passed while" in error["message"]
    bad = http.post("/v1/images/generations", json={"prompt": "a"}, headers={"X-Request-Timeout": "-1"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Request-Timeout"
    served = http.post("/v1/images/generations", json={"prompt": "a tiny red house"},
                       headers={"X-Request-Timeout": "60"})
    assert served.status_code == 200, served.text


def test_a_burst_over_a_full_queue_gets_503s_with_retry_after_and_no_other_5xx(base_url, serve_config):
    from ray import cloudpickle, serve

    from app.builder import deployment_options
    from app.ingress import T2IIngress
    from deployments.config import DeploymentOptions

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # replicas cannot import this file
    retry = serve_config.limits.retry_after_s
    slow = serve.deployment(SlowModel).options(**deployment_options(
        DeploymentOptions(max_ongoing_requests=1, max_queued_requests=1), "SlowModel", retry))
    ingress = serve.deployment(T2IIngress).options(
        **deployment_options(serve_config.deployments.ingress, "Ingress", retry))
    serve.run(ingress.bind(serve_config.model_dump(mode="json"), slow.bind()), name=APP,
              route_prefix=PREFIX)
    try:
        url = f"{base_url}{PREFIX}/v1/images/generations"
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(max_workers=10) as pool:
            assert client.post(url, json={"prompt": "warm"}).status_code == 200
            responses = list(pool.map(lambda _: client.post(url, json={"prompt": "p"}), range(10)))
            statuses = sorted(r.status_code for r in responses)
            assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
            for shed in (r for r in responses if r.status_code == 503):
                assert shed.headers["Retry-After"] == str(retry)
                assert "json" in shed.headers.get("content-type", ""), (shed.headers, shed.text)
                assert shed.json()["error"]["type"] == "overloaded_error"
            assert client.post(url, json={"prompt": "after"}).status_code == 200
    finally:
        serve.delete(APP)
