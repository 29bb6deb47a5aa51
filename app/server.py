"""Process lifecycle for `t2i serve`: Ray up, Serve app up, wait for a signal, everything down."""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
from pathlib import Path

from deployments.config import ServeConfig

logger = logging.getLogger(__name__)


def missing_local_models(config: ServeConfig) -> list[str]:
    return [m.id for m in config.models
            if m.path and not Path(config.resolve_source(m)).exists()]


def init_ray(address: str | None = None, num_cpus: int | None = None,
             metrics_export_port: int | None = None, temp_dir: str | None = None,
             attempts: int = 2) -> None:
    """Join the cluster at ``address``, or start a local Ray; a no-op when Ray is already up.

    A local start is tried ``attempts`` times: on the shared 2-core machine Ray's head has once
    failed to come up in time ("Timed out waiting for file .../gcs_server_port") with nothing
    else running, and a second start succeeded."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
        return
    # A fresh temp dir per run: a stale `ray_current_cluster` file from an earlier
    # `ray stop` makes a later ray.init(num_cpus=...) fail (ENVIRONMENT.md).
    extra = {"_metrics_export_port": metrics_export_port} if metrics_export_port else {}
    for attempt in range(1, attempts + 1):
        try:
            # No dashboard (its HTTP API runs arbitrary code on the cluster); should one be
            # turned on, it binds to loopback. Serve's HTTP proxy binds to config.host.
            ray.init(num_cpus=num_cpus, include_dashboard=False, dashboard_host="127.0.0.1",
                     _temp_dir=temp_dir or tempfile.mkdtemp(prefix="t2i-ray-"),
                     runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}, **extra)
            return
        except (RuntimeError, TimeoutError, ConnectionError) as exc:
            if attempt == attempts:
                raise
            logger.warning("starting Ray failed (%s: %s); trying again (%d of %d)",
                           type(exc).__name__, exc, attempt + 1, attempts)
            ray.shutdown()


def metrics_ports() -> list[int]:
    """Prometheus export port of every live Ray node (what `t2i serve` prints)."""
    import ray

    return sorted({int(n["MetricsExportPort"]) for n in ray.nodes()
                   if n.get("Alive") and n.get("MetricsExportPort")})


def start_serve(config: ServeConfig, address: str | None = None, num_cpus: int | None = None):
    """Start (or join) Ray and deploy the app; returns the Serve app handle."""
    from ray import serve

    from app.builder import build_app

    init_ray(address=address, num_cpus=num_cpus, metrics_export_port=config.metrics_export_port)
    serve.start(http_options={"host": config.host, "port": config.port})
    return serve.run(build_app(config), name=config.app_name, route_prefix="/", blocking=False)


class _StopRequested(Exception):
    """Raised by the signal handler while the app is still deploying, to leave serve.run."""


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
    deploying = threading.Event()

    def on_signal(*_):
        stop.set()
        if deploying.is_set():
            raise _StopRequested()  # serve.run polls in this thread; leave it now, not when it is done

    try:
        init_ray(address=address, num_cpus=num_cpus, metrics_export_port=config.metrics_export_port)
        # Right after ray.init, before the (long) deploy: ray.init installs a native SIGTERM
        # handler that dumps a stack and aborts the process (exit -6), and serve.run can still be
        # polling for the app to be RUNNING after the HTTP proxy already answers. Ours replaces
        # it so Ctrl-C and SIGTERM shut Serve and Ray down in order at any point.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        print(f"t2i: deploying {len(config.models)} models to http://{config.host}:{config.port} "
              f"with the {config.control.policies} control plane", flush=True)
        ports = metrics_ports()
        if ports:
            print("t2i: Prometheus metrics at " + ", ".join(f"http://127.0.0.1:{p}/metrics" for p in ports)
                  + " (t2i_* for the model caches)", flush=True)
        try:
            deploying.set()
            if not stop.is_set():
                start_serve(config, address=address, num_cpus=num_cpus)
        except _StopRequested:
            pass
        finally:
            deploying.clear()
        if not stop.is_set():
            print("t2i: serving (POST /v1/images/generations, GET /v1/models). Ctrl-C to stop.", flush=True)
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
