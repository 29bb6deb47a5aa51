"""A small scripted HTTP server speaking the t2i API (uvicorn on 127.0.0.1, in a thread).

``/v1/models`` and ``/v1/images/generations`` answer like the service, with timings and a replica
id; what a generation does is set per test: answer after a delay, fail with a status, or hang.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MODELS = {"data": [{"id": "b0", "kind": "base", "base_models": [], "default_steps": 2},
                   {"id": "b1", "kind": "base", "base_models": [], "default_steps": 2},
                   {"id": "l0", "kind": "lora", "base_models": []},
                   {"id": "c0", "kind": "controlnet", "base_models": []}],
          "t2i": {"default_base_model": "b0", "slo_s": 1.0,
                  "limits": {"max_images_per_request": 1, "max_steps": 4,
                             "max_loras_per_request": 1, "max_controlnets_per_request": 1}}}


class Scripted:
    """What the server does per request: ('ok', delay_s) answers after the delay, concurrently;
    ('error', status) fails; ('serial', s_per_step) runs requests one at a time, FIFO, for
    steps x s_per_step each (one replica with an execution lock, as a BaseModel replica)."""

    def __init__(self) -> None:
        self.mode: tuple = ("ok", 0.0)
        self.lock = asyncio.Lock()
        self.bodies: list[dict] = []
        self.app = FastAPI()

        @self.app.get("/v1/models")
        async def models() -> dict:
            return MODELS

        @self.app.post("/v1/images/generations")
        async def generate(request: Request) -> JSONResponse:
            body = await request.json()
            self.bodies.append(body)
            replica = f"replica-{len(self.bodies) % 2}"
            kind, value = self.mode
            if kind == "error":
                return JSONResponse({"error": {"message": "scripted failure", "param": None}},
                                    status_code=value)
            queue_s = 0.0
            if kind == "serial":
                waited = time.perf_counter()
                async with self.lock:  # the wait is the queue, as BaseModel reports its lock's
                    started = time.perf_counter()
                    queue_s = started - waited
                    await asyncio.sleep(value * body["num_inference_steps"])
                    value = time.perf_counter() - started
            else:
                await asyncio.sleep(value)
            return JSONResponse({"model": body["base_model"], "data": [{"b64_json": ""}],
                                 "timings": {"queue_s": queue_s, "load_s": 0.01, "inference_s": value,
                                             "total_s": value + 0.01, "fetch_s": 0.004, "swap_s": 0.001,
                                             "unknown_s": 9.0},
                                 "t2i": {"replica": replica}})


@pytest.fixture(scope="module")
def server():
    scripted = Scripted()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(scripted.app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    scripted.url = f"http://127.0.0.1:{port}"
    yield scripted
    srv.should_exit = True
    thread.join(timeout=10)
