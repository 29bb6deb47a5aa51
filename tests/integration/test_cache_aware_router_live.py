"""CacheAwareRouter on a real local Ray Serve: requests go to the replica whose routing stats say it
holds their model, from the driver's handle and from a handle inside another replica (where the
calls made while serving one request share Ray's internal request id).

The deployment is a BaseModel stand-in (no diffusers): the replica of rank i holds model ``m<i>``
and says so in S1-shaped ``record_routing_stats`` (every 0.2 s); a request answers which model
its replica holds. Its router options come from ``router_config`` (the function the builder
uses). Nothing asserts on timing: the test first waits until the stats have reached a handle's
router (three requests for ``m0`` in a row on its holder), then asserts where every later request
went; a router blind to the stats sends each to the holder one time in three.

This file sorts before the HTTP suite, so its Ray instance is gone before the shared one starts.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import tempfile
import time

import pytest

from app.server import init_ray
from deployments.config import parse_config
from deployments.routing import router_config
from deployments.spec import GenerationSpec

pytestmark = pytest.mark.integration

APP = "router-test"
MODELS = ["m0", "m1", "m2"]


class Holder:
    """A BaseModel stand-in holding one model on its 'GPU': the one named by its replica rank."""

    def __init__(self) -> None:
        from ray import serve

        self.held = MODELS[serve.get_replica_context().rank.rank % len(MODELS)]
        self.running = 0

    async def generate(self, spec: GenerationSpec, images=None) -> str:
        self.running += 1
        try:
            await asyncio.sleep(0.02)
            return self.held
        finally:
            self.running -= 1

    async def ready(self) -> str:
        return self.held

    def record_routing_stats(self) -> dict:
        return {"t": time.time(), "queue_len": self.running, "busy_s": 0.02 * self.running,
                "tiers": {self.held: 0}, "loading": [], "gpu_free_bytes": 0, "host_free_bytes": 0,
                "load_cost_s": {m: [0.0, 1.0, 3.0, 10.0] for m in MODELS}, "pool": -1}


class Caller:
    """An ingress stand-in: one request fans out to several concurrent Holder calls."""

    def __init__(self, holder) -> None:
        self.holder = holder

    async def fan_out(self, model: str, n: int) -> list[str]:
        return list(await asyncio.gather(*(self.holder.generate.remote(_spec(model)) for _ in range(n))))


def _spec(model: str) -> GenerationSpec:
    return GenerationSpec(prompt="p", base_model=model, width=8, height=8, steps=1, guidance_scale=0.0, seed=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _warm(call) -> None:
    """Until the stats reach that handle's router: three requests for m0 in a row on its holder."""
    deadline, streak = time.monotonic() + 60, 0
    while streak < 3 and time.monotonic() < deadline:
        streak = streak + 1 if call() == "m0" else 0
        time.sleep(0.1)
    assert streak == 3, "the routing stats never reached the router"


def test_requests_go_to_the_replica_whose_stats_hold_their_model():
    import ray
    from ray import cloudpickle, serve

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # replicas cannot import this file
    config = parse_config({"models": [{"id": m, "kind": "base", "path": m} for m in MODELS],
                           "control": {"report_period_s": 0.2}})
    temp_dir = tempfile.mkdtemp(prefix="t2i-ray-")
    init_ray(num_cpus=2, temp_dir=temp_dir)  # retries a head start that timed out
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
        holder = serve.deployment(Holder).options(
            name="Holder", num_replicas=len(MODELS), max_ongoing_requests=8,
            ray_actor_options={"num_cpus": 0}, request_router_config=router_config(config))
        caller = serve.deployment(Caller).options(name="Caller", ray_actor_options={"num_cpus": 0})
        caller_handle = serve.run(caller.bind(holder.bind()), name=APP, route_prefix=None)
        handle = serve.get_deployment_handle("Holder", app_name=APP)
        assert handle.ready.remote().result(timeout_s=60) in MODELS

        _warm(lambda: handle.generate.remote(_spec("m0")).result(timeout_s=60))
        for model in MODELS:  # from the driver's handle
            answered = [handle.generate.remote(_spec(model)).result(timeout_s=60) for _ in range(10)]
            assert answered == [model] * 10, (model, answered)

        # from inside a replica: three concurrent calls of one request (one internal request id)
        _warm(lambda: caller_handle.fan_out.remote("m0", 1).result(timeout_s=60)[0])
        for model in MODELS:
            answered = caller_handle.fan_out.remote(model, 3).result(timeout_s=60)
            assert answered == [model] * 3, (model, answered)
    finally:
        serve.shutdown()
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        shutil.rmtree(temp_dir, ignore_errors=True)
