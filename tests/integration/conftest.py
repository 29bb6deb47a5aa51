"""One real Ray Serve instance on 127.0.0.1 for the whole integration suite."""

from __future__ import annotations

import shutil
import socket

import httpx
import pytest

from tests.integration.waiting import answers, until


def pytest_collection_modifyitems(items):
    """Tests that start and stop a Ray of their own run before any test that uses the session's
    service (the `base_url` fixture): one process holds one Ray, and a test's ray.shutdown()
    would take the session's service down with it. File names used to give this order by
    accident; a new session test sorting first (test_auth_live) broke it."""
    items.sort(key=lambda item: "base_url" in getattr(item, "fixturenames", ()))  # stable sort


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def broken_models(demo_dir, tmp_path_factory):
    """A base model with a truncated UNet and a LoRA that is not a safetensors file."""
    root = tmp_path_factory.mktemp("broken")
    base = root / "broken-sd"
    shutil.copytree(demo_dir / "base" / "tiny-sd-light", base)
    weights = next((base / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:64])
    lora = root / "broken-lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"\x00" * 32)
    return {"base": str(base), "lora": str(lora)}


@pytest.fixture(scope="session")
def serve_config(demo_config, broken_models):
    raw = demo_config.model_dump()
    raw["port"] = _free_port()
    raw["metrics_export_port"] = _free_port()
    raw["models"] += [
        {"id": "broken-sd", "kind": "base", "path": broken_models["base"], "sizes": ["32x32"]},
        {"id": "broken-lora", "kind": "lora", "path": broken_models["lora"]},
    ]
    raw["cache"]["base_models_per_replica"] = 3
    raw["limits"]["max_image_bytes"] = 64 * 1024
    raw["limits"]["max_body_bytes"] = 1 << 20  # an oversized body stays cheap to send
    return demo_config.model_validate(raw)


@pytest.fixture(scope="session")
def base_url(serve_config):
    import ray
    from ray import serve

    from app.server import start_serve

    start_serve(serve_config, num_cpus=2)
    url = f"http://127.0.0.1:{serve_config.port}"
    if not until(lambda: answers(url), timeout_s=120):
        pytest.fail("the Serve app did not answer /healthz within 120 s")
    yield url
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client
