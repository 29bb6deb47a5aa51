"""The live path over real HTTP: base, LoRAs, ControlNets, cascade, openai client, bad input."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.integration.waiting import until

pytestmark = pytest.mark.integration


def _post(http, **body):
    body.setdefault("prompt", "a tiny red house")
    return http.post("/v1/images/generations", json=body)


def _ok(http, **body) -> dict:
    response = _post(http, **body)
    assert response.status_code == 200, response.text
    return response.json()


def _png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(raw))


def _pixels(payload: dict, index: int = 0) -> np.ndarray:
    return np.asarray(_png(payload["data"][index]["b64_json"]))


def _control_b64(size: int = 32) -> str:
    image = np.zeros((size, size, 3), np.uint8)
    image[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_health_and_model_listing(http):
    assert http.get("/healthz").json()["status"] == "ok"
    listed = http.get("/v1/models").json()
    kinds = {m["id"]: m["kind"] for m in listed["data"]}
    assert listed["object"] == "list"
    assert kinds["tiny-sd-light"] == "base" and kinds["tiny-cn-canny"] == "controlnet"
    assert sum(k == "lora" for k in kinds.values()) >= 8 and kinds["tiny-disc"] == "discriminator"
    # what a client (the trace-replay driver) needs to send only what the service accepts
    light = next(m for m in listed["data"] if m["id"] == "tiny-sd-light")
    assert light["sizes"][0] == "64x64" and light["default_steps"] == 2
    extra = listed["t2i"]
    assert extra["default_base_model"] == "tiny-sd-light" and extra["slo_s"] == 5.0
    assert extra["limits"] == {"max_images_per_request": 4, "max_steps": 50,
                               "max_loras_per_request": 3, "max_controlnets_per_request": 2}


@pytest.mark.parametrize("size", ["64x64", "32x32", "128x128"])
def test_base_only_returns_a_png_of_the_requested_size(http, size):
    payload = _ok(http, size=size, seed=1)
    width, height = map(int, size.split("x"))
    assert _png(payload["data"][0]["b64_json"]).size == (width, height)
    assert payload["model"] == "tiny-sd-light" and payload["t2i"]["seed"] == 1
    replica = payload["t2i"]["replica"]
    assert isinstance(replica, str) and replica, "t2i.replica names the BaseModel replica"
    timings = payload["timings"]
    assert timings["inference_s"] > 0 and timings["total_s"] >= timings["inference_s"]
    assert timings["fetch_s"] == 0.0  # reported, and nothing fetched for a request without LoRAs


def test_same_seed_same_bytes_and_timing_header(http):
    first = _post(http, seed=42, size="32x32")
    second = _post(http, seed=42, size="32x32")
    other = _ok(http, seed=43, size="32x32")
    assert first.json()["data"][0]["b64_json"] == second.json()["data"][0]["b64_json"]
    assert first.json()["data"][0]["b64_json"] != other["data"][0]["b64_json"]
    assert "inference;dur=" in first.headers["server-timing"]


def test_loras_change_the_image_and_removing_them_restores_it(http):
    baseline = _pixels(_ok(http, seed=5, size="32x32"))
    one = _ok(http, seed=5, size="32x32", loras=[{"id": "tiny-lora-noir", "scale": 0.9}])
    two = _ok(http, seed=5, size="32x32",
              loras=[{"id": "tiny-lora-noir", "scale": 0.9}, {"id": "tiny-lora-neon", "scale": 0.6}])
    assert one["t2i"]["loras"] == [["tiny-lora-noir", 0.9]]
    assert not np.array_equal(_pixels(one), baseline)
    assert not np.array_equal(_pixels(two), _pixels(one))
    assert np.array_equal(_pixels(_ok(http, seed=5, size="32x32")), baseline)
    # the same adapters again come from the slots, with no swap, and give the same image
    again = _ok(http, seed=5, size="32x32",
                loras=[{"id": "tiny-lora-neon", "scale": 0.6}, {"id": "tiny-lora-noir", "scale": 0.9}])
    assert again["t2i"]["adapters_swapped"] == 0
    assert np.abs(_pixels(again).astype(int) - _pixels(two).astype(int)).max() <= 1


def test_concurrent_requests_never_see_each_others_adapters(http):
    bodies = [dict(seed=9, size="32x32", loras=[{"id": lid, "scale": 1.0}] if lid else [])
              for lid in ["tiny-lora-ink", None, "tiny-lora-clay", None, "tiny-lora-ink", None,
                          "tiny-lora-clay", None]]
    sequential = {str(b["loras"]): _pixels(_ok(http, **b)) for b in bodies[:4]}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda b: (str(b["loras"]), _pixels(_ok(http, **b))), bodies))
    for key, pixels in results:
        assert np.array_equal(pixels, sequential[key]), f"request with loras={key} was disturbed"


@pytest.mark.parametrize("nets", [["tiny-cn-canny"], ["tiny-cn-canny", "tiny-cn-edges"]])
def test_controlnets(http, nets):
    plain = _pixels(_ok(http, seed=3, size="32x32"))
    body = dict(seed=3, size="32x32", controlnets=[
        {"id": n, "image": _control_b64(48), "conditioning_scale": 1.0} for n in nets])
    payload = _ok(http, **body)
    assert _png(payload["data"][0]["b64_json"]).size == (32, 32)
    assert not np.array_equal(_pixels(payload), plain)
    assert payload["timings"]["preprocess_s"] > 0
    assert np.array_equal(_pixels(_ok(http, **body)), _pixels(payload))


def test_cascade_keeps_light_images_above_the_threshold_and_defers_the_rest(http):
    light = _pixels(_ok(http, seed=21, size="32x32", base_model="tiny-sd-light"))
    heavy = _pixels(_ok(http, seed=21, size="32x32", base_model="tiny-sd-heavy"))
    kept = _ok(http, seed=21, size="32x32", cascade=True, cascade_threshold=0.0)
    deferred = _ok(http, seed=21, size="32x32", cascade=True, cascade_threshold=1.0)
    assert kept["t2i"]["cascade"]["deferred"] == [] and kept["model"] == "tiny-sd-light"
    assert np.array_equal(_pixels(kept), light)
    assert deferred["t2i"]["cascade"]["deferred"] == [0] and deferred["model"] == "tiny-sd-heavy"
    assert np.array_equal(_pixels(deferred), heavy)
    assert 0.0 < kept["t2i"]["cascade"]["scores"][0] < 1.0
    assert deferred["timings"]["discriminator_s"] > 0


def test_the_cascade_plan_comes_from_measured_demand_and_is_served(http):
    """The coordinator's planner starts from the config's threshold, takes over once the ingress
    has reported enough discriminator scores, and the responses then carry its cutoff."""
    view = http.get("/v1/cascade").json()
    assert view["planner"] == "demand" and view["light"] == "tiny-sd-light"
    first = _ok(http, seed=40, size="32x32", n=4, cascade=True)["t2i"]["cascade"]
    assert first["threshold_source"] in ("config", "planner") and len(first["scores"]) == 4
    for k in range(8):  # 4 images a request: 36 scores, past the planner's 32
        _ok(http, seed=41 + k, size="32x32", n=4, cascade=True)
    # the ingress reports once a second
    plan = until(lambda: (lambda p: p if p["source"] == "planner" else None)(http.get("/v1/cascade").json()["plan"]),
                 timeout_s=15)
    assert plan is not None, http.get("/v1/cascade").json()
    assert plan["scores_seen"] >= 32 and plan["light_service_s"] > 0 and plan["heavy_service_s"] > 0
    assert 0 <= plan["deferred_fraction"] <= 1 and plan["light_replicas"] + plan["heavy_replicas"] <= plan["gpus"]
    assert sorted(plan["stages"]) == ["tiny-sd-heavy", "tiny-sd-light"]
    time.sleep(1.5)  # the ingress's next report brings the plan to it
    served = _ok(http, seed=60, size="32x32", cascade=True)["t2i"]["cascade"]
    assert served["threshold_source"] == "planner"
    forced = _ok(http, seed=60, size="32x32", cascade=True, cascade_threshold=1.0)["t2i"]["cascade"]
    assert forced["threshold_source"] == "request" and forced["deferred"] == [0]


def test_openai_client_round_trip(base_url, http):
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    result = client.images.generate(
        model="tiny-sd-light", prompt="a tiny red house", n=2, size="32x32",
        response_format="b64_json",
        extra_body={"seed": 8, "loras": [{"id": "tiny-lora-film", "scale": 0.7}]})
    assert len(result.data) == 2
    raw = _ok(http, model="tiny-sd-light", n=2, size="32x32", response_format="b64_json", seed=8,
              loras=[{"id": "tiny-lora-film", "scale": 0.7}])
    assert [d.b64_json for d in result.data] == [d["b64_json"] for d in raw["data"]]
    assert result.data[0].b64_json != result.data[1].b64_json
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="tiny-sd-light", prompt="x", size="1024x1024")
    assert "size" in str(info.value)


@pytest.mark.parametrize("body, param", [
    ({"base_model": "no-such-model"}, "base_model"),
    ({"loras": [{"id": "no-such-lora"}]}, "loras[0].id"),
    ({"loras": [{"id": "../../etc/passwd"}]}, "loras[0].id"),
    ({"base_model": "../../etc/passwd"}, "base_model"),
    ({"size": "100x100"}, "size"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 10_000}, "num_inference_steps"),
    ({"loras": [{"id": "tiny-lora-ink", "scale": 100}]}, "loras[0].scale"),
    ({"n": 50}, "n"),
    ({"controlnets": [{"id": "tiny-cn-canny", "image": "%%%not-base64%%%"}]}, "controlnets[0].image"),
    ({"controlnets": [{"id": "tiny-cn-canny", "image": base64.b64encode(b"plain text").decode()}]},
     "controlnets[0].image"),
    ({"controlnets": [{"id": "tiny-cn-canny", "image": "A" * 200_000}]}, "controlnets[0].image"),
    ({"controlnets": [{"id": "tiny-cn-canny", "image": "AA==", "conditioning_scale": -1}]},
     "controlnets[0].conditioning_scale"),
    ({"response_format": "url"}, "response_format"),
    ({"style": "vivid"}, "style"),
    ({"prompt": ""}, "prompt"),
])
def test_bad_requests_get_a_400_naming_the_field(http, body, param):
    response = _post(http, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and param.split("[")[0] in error["message"]


def test_malformed_json_is_a_400(http):
    response = http.post("/v1/images/generations", content=b"{not json",
                         headers={"content-type": "application/json"})
    assert response.status_code == 400


def test_a_model_that_fails_to_load_is_named_and_the_replica_keeps_serving(http, broken_models):
    response = _post(http, base_model="broken-sd", size="32x32")
    assert response.status_code == 500
    assert "'broken-sd' failed to load" in response.json()["error"]["message"]
    assert "Traceback" not in response.json()["error"]["message"]
    response = _post(http, size="32x32", loras=[{"id": "broken-lora"}])
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert "'broken-lora' failed to load" in message and "pytorch_lora_weights" in message
    assert broken_models["lora"] not in message  # where the server keeps its files stays in its log
    assert _post(http, size="32x32", seed=1).status_code == 200
    assert _post(http, size="32x32", loras=[{"id": "tiny-lora-ink"}]).status_code == 200


@pytest.mark.parametrize("control", [
    {"image": base64.b64encode(b"plain text, valid base64, not an image").decode()},
    {"image": _control_b64(32), "preprocessor": "no-such-preprocessor"},
])
def test_a_replica_error_reaches_the_client_as_one_line_without_the_traceback(http, control):
    response = _post(http, size="32x32", controlnets=[{"id": "tiny-cn-canny", **control}])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("controlnets[0]")
    for leak in ("Traceback", "ray::", "\n", "\x1b[", "/work/", "/tmp/", "site-packages"):
        assert leak not in error["message"], error["message"]


def test_unknown_routes_and_methods_use_the_error_shape_and_carry_a_request_id(http):
    missing = http.get("/v1/no-such-route")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = http.delete("/v1/models")
    assert wrong.status_code == 405 and "message" in wrong.json()["error"]
    assert missing.headers["x-request-id"]


def test_readyz_pings_every_deployment_and_healthz_stays_liveness(http):
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True
    assert set(body["deployments"]) == {"BaseModel", "ControlNet", "LoRAStore", "Discriminator"}
    assert all(state["ready"] for state in body["deployments"].values())
    assert http.get("/healthz").json()["status"] == "ok"
