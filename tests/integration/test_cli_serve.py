"""`t2i serve` as a user runs it: a foreground process that serves until SIGTERM, then exits 0.

The SIGTERM goes out as soon as the first request is answered, which on a busy box can be while
`serve.run` is still polling for the app to be RUNNING: the process must exit 0 from there too.
It runs `--policies ray-default` (serve.multiplexed feeding BaseModel's one generate path); the
shared service of the HTTP suite runs the default, the coordinator.

This file sorts before the HTTP suite, so it runs before the shared Serve fixture starts and the
two Ray instances never compete for the two cores.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_serve_runs_in_the_foreground_and_stops_cleanly_on_sigterm(demo_dir, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path / "serve.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--model-root", str(demo_dir), "--port", str(port),
         "--num-cpus", "2", "--policies", "ray-default"], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 150
        while time.time() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        assert process.poll() is None, "t2i serve exited early:\n" + (tmp_path / "serve.log").read_text()[-3000:]
        response = httpx.post(f"http://127.0.0.1:{port}/v1/images/generations",
                              json={"prompt": "a kite", "size": "32x32"}, timeout=300)  # first request loads the pipeline; slow on a busy 2-core box
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=90)
        assert code == 0, f"t2i serve exited {code} on SIGTERM:\n" + (tmp_path / "serve.log").read_text()[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
    output = (tmp_path / "serve.log").read_text()
    assert "deploying 13 models" in output and "shutting down" in output
    assert "ray-default control plane" in output  # the rest of the suite runs the coordinator
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
