"""Process lifecycle for `t2i serve`: Ray up, Serve app up, wait for a signal, everything down."""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path

from deployments.config import ServeConfig


def missing_local_models(config: ServeConfig) -> list[str]:
    return [m.id for m in config.models
            if m.path and not Path(config.resolve_source(m)).exists()]


def start_serve(config: ServeConfig, address: str | None = None, num_cpus: int | None = None):
    """Start (or join) Ray and deploy the app; returns the Serve app handle."""
    import ray
    from ray import serve

    from app.builder import build_app

    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            # A fresh temp dir per run: a stale `ray_current_cluster` file from an earlier
            # `ray stop` makes a later ray.init(num_cpus=...) fail (ENVIRONMENT.md).
            ray.init(num_cpus=num_cpus, include_dashboard=False,
                     _temp_dir=tempfile.mkdtemp(prefix="t2i-ray-"),
                     runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    serve.start(http_options={"host": config.host, "port": config.port})
    return serve.run(build_app(config), name=config.app_name, route_prefix="/", blocking=False)


def wait_warm(config: ServeConfig, timeout_s: float = 300.0, stop: threading.Event | None = None) -> dict | None:
    """GET /healthz until it answers 200, which the ingress does once its start-up warm-up (one
    call through each handle) is done. None when ``stop`` is set first (a signal)."""
    import time

    import httpx

    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    deadline = time.monotonic() + timeout_s
    while stop is None or not stop.is_set():
        try:
            resp = httpx.get(f"http://{host}:{config.port}/healthz", timeout=2)
            if resp.status_code == 200:
                return resp.json()
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app did not answer /healthz within {timeout_s:.0f} s")
        time.sleep(0.5)
    return None


def run_server(config: ServeConfig, address: str | None = None, num_cpus: int | None = None) -> int:
    import ray
    from ray import serve

    stop = threading.Event()
    try:
        start_serve(config, address=address, num_cpus=num_cpus)
        # After ray.init: it installs a native SIGTERM handler that dumps a stack and aborts;
        # ours replaces it so Ctrl-C and SIGTERM both shut Serve and Ray down in order.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"t2i: serving {len(config.models)} models at http://{config.host}:{config.port} "
              "(POST /v1/images/generations, GET /v1/models). Ctrl-C to stop.", flush=True)
        warm = wait_warm(config, stop=stop)
        if warm is not None:
            print(f"t2i: warm (the ingress reached every deployment in {warm.get('warm_up_s', 0):.1f} s)",
                  flush=True)
        stop.wait()
        print("t2i: shutting down", flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            if ray.is_initialized():
                ray.shutdown()
    return 0
