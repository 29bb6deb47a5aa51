"""The BaseModel autoscaler on a real local Ray Serve: a burst of slow requests scales a deployment
up, quiet scales it down after the delay, and the replica count stays within min 1 / max 3.

The deployment is a stand-in (no diffusers): each request sleeps 0.5 s, and the replica reports
S2-shaped metrics through ``record_autoscaling_stats``. Its options come from
``autoscaling_options`` (the same function the builder uses), with 1 s / 2 s delays. Nothing here
asserts on timing: the test polls ``serve.status()`` with generous deadlines and checks what was
reached, and the controller's log shows the policy's own scale-down line carrying the replicas'
``cache_value`` (so the decision came from this policy and its custom metrics, not Ray's default).

This file sorts before the HTTP suite, so its Ray instance is gone before the shared one starts.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

import pytest

from app.server import init_ray
from deployments.autoscaling import autoscaling_options
from deployments.config import parse_config

pytestmark = pytest.mark.integration

APP, NAME = "autoscale-test", "BaseModel"
CACHE_VALUE = 42.25  # what every stand-in replica reports; found again in the controller's log
SERVICE_S = 0.5


class SlowModel:
    """A BaseModel stand-in: one request = 0.5 s of waiting; S2 metrics as BaseModel reports them."""

    def __init__(self) -> None:
        self.running = 0
        self.requests_total = 0
        self.busy_total_s = 0.0
        self.done = 0

    async def __call__(self, i: int) -> int:
        self.running += 1
        self.requests_total += 1
        start = time.monotonic()
        try:
            await asyncio.sleep(SERVICE_S)
            return i
        finally:
            self.running -= 1
            self.done += 1
            self.busy_total_s += time.monotonic() - start

    def record_autoscaling_stats(self) -> dict[str, float]:
        service = self.busy_total_s / self.done if self.done else 0.0
        return {"queue_len": float(self.running), "loads_in_progress": 0.0, "busy_s": self.running * SERVICE_S,
                "requests_total": float(self.requests_total), "service_s": service, "resident_bytes": 0.0,
                "cache_value": CACHE_VALUE}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _counts() -> tuple[int, int]:
    """(running replicas, replicas not stopping) of the stand-in deployment."""
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or NAME not in app.deployments:
        return 0, 0
    states = {str(getattr(k, "value", k)): v for k, v in app.deployments[NAME].replica_states.items()}
    return states.get("RUNNING", 0), sum(v for k, v in states.items() if k != "STOPPING")


def _wait_for(predicate, timeout_s: float, seen: list[tuple[int, int]]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = _counts()
        seen.append(counts)
        if predicate(*counts):
            return True
        time.sleep(0.5)
    return False


def test_a_burst_scales_up_quiet_scales_down_and_bounds_hold():
    import ray
    from ray import cloudpickle, serve

    # the replicas cannot import this test module by name: ship SlowModel's code with it
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = parse_config({
        "models": [{"id": "m", "kind": "base", "path": "m"}],
        "deployments": {"base_model": {"autoscaling": {"min_replicas": 1, "max_replicas": 3}}},
        "control": {"report_period_s": 1.0, "autoscaling": {
            "policy": "ewma-headroom", "upscale_delay_s": 1.0, "downscale_delay_s": 2.0, "hysteresis": 0.1}}})
    options = autoscaling_options(config)
    temp_dir = tempfile.mkdtemp(prefix="t2i-ray-")
    init_ray(num_cpus=2, temp_dir=temp_dir)  # retries a head start that timed out
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
        deployment = serve.deployment(SlowModel).options(
            name=NAME, max_ongoing_requests=2, graceful_shutdown_timeout_s=5,
            ray_actor_options={"num_cpus": 0}, **options)
        handle = serve.run(deployment.bind(), name=APP, route_prefix=None)
        assert handle.remote(0).result(timeout_s=120) == 0
        assert _wait_for(lambda running, live: running == 1, 60, seen)

        errors: list[BaseException] = []

        def client() -> None:  # closed loop: one request in flight per thread while the burst lasts
            while not stop.is_set():
                try:
                    handle.remote(1).result(timeout_s=120)
                except BaseException as exc:  # noqa: BLE001 - reported by the test below
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=client, daemon=True) for _ in range(12)]
        for thread in threads:
            thread.start()
        scaled_up = _wait_for(lambda running, live: running >= 3, 90, seen)
        # keep the burst on a while at max: 12 in flight x 0.5 s still wants more than 3 replicas
        _wait_for(lambda running, live: False, 6, seen)
        stop.set()
        for thread in threads:
            thread.join(timeout=150)
        assert not errors, errors[:3]
        assert scaled_up, f"the burst did not reach 3 running replicas; (running, live) seen: {seen[-20:]}"

        scaled_down = _wait_for(lambda running, live: live == 1, 90, seen)
        assert scaled_down, f"quiet did not bring it back to 1 replica; (running, live) seen: {seen[-20:]}"
        _wait_for(lambda running, live: False, 3, seen)  # and it stays at the floor
        assert _counts() == (1, 1)
        assert max(live for _, live in seen) <= 3  # never above max_replicas
        assert min(running for running, _ in seen) >= 1  # never below min_replicas once up

        logs = "".join(open(path, errors="replace").read() for path in
                       glob.glob(os.path.join(temp_dir, "session_*", "logs", "serve", "controller_*.log")))
        assert "deployments.autoscaling:BaseModelAutoscaler" in logs  # Ray's "Using custom autoscaling policy"
        assert f"{CACHE_VALUE}" in logs and "BaseModel autoscaler: 3 ->" in logs, logs[-3000:]
    finally:
        stop.set()
        serve.shutdown()
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        shutil.rmtree(temp_dir, ignore_errors=True)
