"""Bad input refused before it costs anything: body size and encoding (app/limits.py), strict
numbers and control characters (app/schemas.py), decompression bombs (preprocessors), unknown
ids that list the valid ones (app/resolve.py), and the limits' cross-field checks."""

from __future__ import annotations

import asyncio
import json
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from pydantic import ValidationError

from app.limits import BodyLimitMiddleware
from app.resolve import resolve_request
from app.schemas import ImageGenerationRequest
from deployments.config import ServeConfig
from deployments.errors import RequestError
from deployments.preprocessors import decode_image


def _app(limit: int) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware, max_bytes=lambda: limit)

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    return app


def _post(app: FastAPI, **kwargs) -> httpx.Response:
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/echo", **kwargs)

    return asyncio.run(main())


def test_bodies_over_the_limit_are_a_413_before_the_app_reads_them():
    app = _app(1000)
    assert _post(app, content=b"x" * 1000, headers={"content-type": "text/plain"}).json() == {"bytes": 1000}
    response = _post(app, content=b"x" * 1001)
    assert response.status_code == 413
    assert "limits.max_body_bytes=1000" in response.json()["error"]["message"]

    async def chunks():  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b"y" * 300

    assert _post(app, content=chunks()).status_code == 413


def test_a_json_body_that_is_not_utf8_is_a_400_naming_the_byte():
    app = _app(1000)
    response = _post(app, content=b'{"prompt": "caf\xe9"}', headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "body" and "UTF-8 (byte 15)" in error["message"]
    ok = _post(app, content='{"prompt": "café"}'.encode(), headers={"content-type": "application/json"})
    assert ok.status_code == 200


@pytest.mark.parametrize("raw, field", [
    ('{"prompt": "x", "guidance_scale": NaN}', "guidance_scale"),
    ('{"prompt": "x", "guidance_scale": Infinity}', "guidance_scale"),
    ('{"prompt": "x", "cascade_threshold": 1e400}', "cascade_threshold"),
    ('{"prompt": "x", "loras": [{"id": "a", "scale": -Infinity}]}', "scale"),
    ('{"prompt": "x", "controlnets": [{"id": "a", "image": "", "conditioning_scale": NaN}]}',
     "conditioning_scale"),
    ('{"prompt": "a\\u0000b"}', "prompt"),
    ('{"prompt": "x", "negative_prompt": "\\u001b[31mred"}', "negative_prompt"),
    ('{"prompt": "x", "model": "../../etc/passwd"}', "model"),
    ('{"prompt": "x", "base_model": "/etc/passwd"}', "base_model"),
    ('{"prompt": "x", "loras": [{"id": "a\\nb"}]}', "id"),
])
def test_strict_numbers_control_characters_and_paths_are_refused_by_field(raw, field):
    with pytest.raises(ValidationError) as info:
        ImageGenerationRequest.model_validate(json.loads(raw))
    assert info.value.errors()[0]["loc"][-1] == field


def test_prompts_keep_tabs_and_newlines():
    assert ImageGenerationRequest(prompt="a\tb\r\nc").prompt == "a\tb\r\nc"


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height over a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_from_its_header():
    started = time.perf_counter()
    with pytest.raises(RequestError) as info:
        decode_image(_png_header(3000, 3000), "controlnets[1].image", max_pixels=2048 * 2048)
    assert info.value.field == "controlnets[1].image"
    assert "3000x3000" in info.value.message and "limits.max_image_pixels" in info.value.message
    assert time.perf_counter() - started < 0.5  # 27 MB of pixels were never allocated
    with pytest.raises(RequestError, match="limits.max_image_pixels"):  # past PIL's own limit too
        decode_image(_png_header(20000, 20000), "controlnets[0].image")
    # within the limit, the same truncated data is an undecodable image, not a server error
    with pytest.raises(RequestError, match="not a decodable"):
        decode_image(_png_header(64, 64), "controlnets[0].image")


def test_a_valid_image_decodes():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 16, 3), 7, np.uint8)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), max_pixels=128).shape == (8, 16, 3)
    with pytest.raises(RequestError, match="limits.max_image_pixels=127"):
        decode_image(buffer.getvalue(), max_pixels=127)


def _config(**limits) -> ServeConfig:
    return ServeConfig(models=[{"id": "base", "kind": "base", "path": "b", "sizes": ["1024x1024"]},
                               *({"id": f"lora-{i}", "kind": "lora", "path": "l"} for i in range(3))],
                       limits=limits)


def test_limits_cross_field_checks_name_the_fields():
    with pytest.raises(ValidationError, match="limits.max_body_bytes must hold"):
        _config(max_body_bytes=1 << 20, max_image_bytes=8 << 20)
    with pytest.raises(ValidationError, match=r"limits.max_image_pixels .* \(1048576 pixels\)"):
        _config(max_image_pixels=512 * 512)
    assert _config(max_image_pixels=1024 * 1024).limits.max_image_pixels == 1 << 20


def test_unknown_ids_list_the_valid_ones_or_point_to_the_model_list():
    with pytest.raises(RequestError) as info:
        resolve_request(_config(), ImageGenerationRequest(prompt="x", loras=[{"id": "nope"}]), seed=0)
    assert info.value.field == "loras[0].id" and "['lora-0', 'lora-1', 'lora-2']" in info.value.message
    many = ServeConfig(models=[{"id": f"base-{i}", "kind": "base", "path": "b"} for i in range(30)])
    with pytest.raises(RequestError, match="one of the 30 listed by GET /v1/models"):
        resolve_request(many, ImageGenerationRequest(prompt="x", model="nope"), seed=0)


def test_model_load_messages_lose_absolute_paths_but_keep_file_names():
    from app.ingress import without_paths

    message = ("model 'x' failed to load: cannot read '/srv/models/x/pytorch_lora_weights.safetensors'; "
               "no file in directory /srv/models/base/tiny-sd.")
    out = without_paths(message)
    assert "/srv" not in out
    assert "'.../pytorch_lora_weights.safetensors'" in out and ".../tiny-sd." in out
    kept = "rank 8 exceeds cache.lora_max_rank=4; ratio 1/2; see http://host/a/b and ./rel/x"
    assert without_paths(kept) == kept
