"""Faults on the suite's live service: a BaseModel replica killed mid-request, the LoRAStore's
replica killed, the ControlNet deployment's replica killed (the coordinator's crash is in
test_coordinator_live.py).

Each kill is Ray's own way (`ray.kill(handle, no_restart=False)` on the replica actor, found by
its `SERVE_REPLICA::<app>#<deployment>#...` name): Serve replicas run with max_restarts=0, so the
Serve controller must start a new one. Requests in flight and sent meanwhile either succeed or
fail fast in the OpenAI error shape (5xx, one line, no traceback); every request carries a client
timeout far below the test's, so a hang fails the test instead of stalling the suite; each test
ends only when /readyz is 200 again and a request succeeds, so later tests get a healthy service.
"""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.waiting import answers, until

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT_S = 45.0  # per request: a hung request fails here, well inside the test
RECOVERY_TIMEOUT_S = 90.0


def _replicas(app: str, deployment: str) -> list[dict]:
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def _kill_replica(app: str, deployment: str) -> str:
    import ray

    named = _replicas(app, deployment)
    assert len(named) == 1, named
    actor = ray.get_actor(named[0]["name"], namespace=named[0]["namespace"])
    ray.kill(actor, no_restart=False)
    return named[0]["name"]


def _post(base_url: str, body: dict, deadline_s: float | None = None) -> tuple:
    """(status or 'timeout', json or text, seconds, headers): never raises, never waits past
    the client's timeout.
    `deadline_s` asks the service for a shorter deadline (X-Request-Timeout)."""
    headers = {"X-Request-Timeout": str(deadline_s)} if deadline_s else {}
    started = time.perf_counter()
    try:
        response = httpx.post(f"{base_url}/v1/images/generations", json=body, headers=headers,
                              timeout=REQUEST_TIMEOUT_S)
    except httpx.TimeoutException:
        return "timeout", "", time.perf_counter() - started, {}
    try:
        payload = response.json()
    except ValueError:
        payload = response.text
    return response.status_code, payload, time.perf_counter() - started, dict(response.headers)


def _assert_answered(results: list[tuple], allowed=("replica_unavailable", "deadline_exceeded")) -> dict:
    """Every request answered: 200, or a 5xx in the OpenAI error shape with a one-line message
    of an `allowed` type (a client can act on it: retry), never a bare server_error."""
    counts: dict = {}
    for status, payload, seconds, headers in results:
        counts[status] = counts.get(status, 0) + 1
        assert status != "timeout", f"a request hung past {REQUEST_TIMEOUT_S} s: {results}"
        if status == 200:
            continue
        assert 500 <= status < 600, (status, payload)
        assert isinstance(payload, dict) and "error" in payload, (status, payload)
        message = payload["error"]["message"]
        assert "\n" not in message and "Traceback" not in message and "\x1b" not in message, message
        assert "ActorID" not in message and "/work/" not in message, message
        assert payload["error"]["type"] in allowed, payload
        if payload["error"]["type"] == "replica_unavailable":
            assert status == 503 and seconds < 10, (status, seconds)  # fails fast
            assert int(headers["retry-after"]) >= 1, headers
    print("answers:", counts, sorted({r[1]["error"]["type"] for r in results if r[0] != 200}),
          f"slowest {max(r[2] for r in results):.1f} s")
    return counts


AFTER_KILL_DEADLINE_S = 4.0  # requests sent while the replica is gone: bounded by their deadline


def _storm(base_url: str, bodies: list[dict], kill, kill_after_s: float) -> tuple[list, list]:
    """Send `bodies` concurrently, kill a replica `kill_after_s` in, send them once more while
    the replica is gone (with a short deadline: they wait for its replacement at most that
    long), then collect every answer: (in flight at the kill, sent after it)."""
    with ThreadPoolExecutor(2 * len(bodies)) as pool:
        before = [pool.submit(_post, base_url, b) for b in bodies]
        time.sleep(kill_after_s)
        kill()
        after = [pool.submit(_post, base_url, b, AFTER_KILL_DEADLINE_S) for b in bodies]
        return ([f.result(timeout=REQUEST_TIMEOUT_S + 15) for f in before],
                [f.result(timeout=REQUEST_TIMEOUT_S + 15) for f in after])


def _recovers(base_url: str, deployment: str, app: str, killed: str, body: dict) -> None:
    assert until(lambda: answers(base_url, "/readyz"), RECOVERY_TIMEOUT_S), f"/readyz not 200 after killing {killed}"
    new = _replicas(app, deployment)
    assert new and all(a["name"] != killed for a in new), (killed, new)  # a new replica serves
    # the ingress's handle may hold the dead replica a moment longer: a retry or two at most
    replies = [_post(base_url, body) for _ in range(3)]
    _assert_answered(replies)
    assert replies[-1][0] == 200, replies


def _png(size: int = 32) -> str:
    import numpy as np
    from PIL import Image

    pixels = (np.indices((size, size)).sum(axis=0) % 2 * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_a_base_model_replica_killed_mid_request(base_url, serve_config, http):
    app = serve_config.app_name
    # the session's default model (loaded already), slow enough that four queue on the replica
    slow = {"prompt": "a lighthouse", "model": "tiny-sd-light", "size": "64x64",
            "num_inference_steps": 20}
    warm = _post(base_url, slow)  # warm: the kill lands on denoising, not a load
    assert warm[0] == 200, warm
    killed = []
    in_flight, after = _storm(base_url, [dict(slow) for _ in range(4)],
                              lambda: killed.append(_kill_replica(app, "BaseModel")), kill_after_s=0.5)
    # the replica serialises them: one denoising, three queued on it, all lost with it
    counts = _assert_answered(in_flight, allowed=("replica_unavailable",))
    assert counts.get(503), f"the kill landed on no request in flight: {counts}"
    _assert_answered(after)
    _recovers(base_url, "BaseModel", app, killed[0], slow)


def test_the_lora_store_killed_while_adapters_are_fetched(base_url, serve_config, http):
    app = serve_config.app_name
    loras = [m.id for m in serve_config.models if m.kind == "lora" and m.id != "broken-lora"]
    bodies = [{"prompt": "a fox", "model": "tiny-sd-light", "size": "32x32",
               "loras": [{"id": loras[i % len(loras)]}]} for i in range(8)]
    killed = []
    in_flight, after = _storm(base_url, bodies, lambda: killed.append(_kill_replica(app, "LoRAStore")),
                              kill_after_s=0.2)
    _assert_answered(in_flight + after)
    _recovers(base_url, "LoRAStore", app, killed[0],
              {"prompt": "a fox", "model": "tiny-sd-light", "size": "32x32",
               "loras": [{"id": loras[-1]}, {"id": loras[0]}]})


def test_the_controlnet_replica_killed_while_images_are_preprocessed(base_url, serve_config, http):
    app = serve_config.app_name
    body = {"prompt": "a bridge", "model": "tiny-sd-light", "size": "32x32",
            "controlnets": [{"id": "tiny-cn-canny", "image": _png()}]}
    warm = _post(base_url, body)
    assert warm[0] == 200, warm
    killed = []
    in_flight, after = _storm(base_url, [dict(body) for _ in range(8)],
                              lambda: killed.append(_kill_replica(app, "ControlNet")), kill_after_s=0.1)
    _assert_answered(in_flight + after)
    _recovers(base_url, "ControlNet", app, killed[0], body)
