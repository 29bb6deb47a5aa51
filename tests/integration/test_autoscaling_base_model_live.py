"""The real application's BaseModel deployment under the custom autoscaler, on local Ray Serve
with the tiny demo models: a burst of image requests scales it from 1 to 2 replicas, quiet brings
it back to 1, the bounds hold and every request is answered.

The whole chain is the product's: `t2i serve`'s start_serve and builder (BaseModel with
`autoscaling_options`), the replicas' `record_autoscaling_stats`, the policy behind Guardrails.
Short delays (1 s up, 3 s down) keep it quick; nothing asserts on timing, the test polls
`serve.status()` with generous deadlines. It sorts before the HTTP suite, so its Ray instance is
gone before the shared one starts.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _base_model_replicas(app: str) -> tuple[int, int]:
    """(running, not stopping) replicas of the app's BaseModel deployment."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or "BaseModel" not in status.deployments:
        return 0, 0
    states = {str(getattr(k, "value", k)): v for k, v in status.deployments["BaseModel"].replica_states.items()}
    return states.get("RUNNING", 0), sum(v for k, v in states.items() if k != "STOPPING")


def test_a_burst_of_image_requests_scales_base_model_up_and_quiet_scales_it_down(demo_config):
    import ray
    from ray import serve

    from app.server import start_serve

    raw = demo_config.model_dump(mode="json")
    raw["port"] = _free_port()
    raw["deployments"]["base_model"] = {"num_cpus": 0, "max_ongoing_requests": 2,
                                        "autoscaling": {"min_replicas": 1, "max_replicas": 2}}
    # the burst queues on purpose (that is what scales it up): no deadline may drop that work
    raw["limits"]["request_timeout_s"] = 600.0
    raw["control"].update(policies="coordinator", report_period_s=1.0, autoscaling={
        "policy": "ewma-headroom", "upscale_delay_s": 1.0, "downscale_delay_s": 3.0, "hysteresis": 0.1})
    config = demo_config.model_validate(raw)
    url = f"http://127.0.0.1:{config.port}"
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    errors: list[str] = []

    def wait_for(predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen.append(_base_model_replicas(config.app_name))
            if predicate(*seen[-1]):
                return True
            time.sleep(0.5)
        return False

    def client() -> None:  # closed loop: one request in flight per thread while the burst lasts
        with httpx.Client(base_url=url, timeout=300) as http:
            while not stop.is_set():
                r = http.post("/v1/images/generations", json={"prompt": "a kite", "size": "64x64",
                                                               "num_inference_steps": 6})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:300]}")
                    return

    try:
        start_serve(config, num_cpus=2)
        assert wait_for(lambda running, live: running == 1, 120), seen[-5:]
        threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
        for thread in threads:
            thread.start()
        scaled_up = wait_for(lambda running, live: running >= 2, 150)
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors[:3]
        assert scaled_up, f"the burst did not reach 2 running BaseModel replicas; (running, live): {seen[-20:]}"
        assert wait_for(lambda running, live: live == 1, 120), f"quiet did not scale down: {seen[-20:]}"
        assert max(live for _, live in seen) <= 2 and min(running for running, _ in seen) >= 1
    finally:
        stop.set()
        serve.shutdown()
        ray.shutdown()
