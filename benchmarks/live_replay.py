"""Live trace replay at three load levels, and the simulator's prediction of each run (parity).

What it does, end to end, with the real commands:
  1. builds the many-model demo (`t2i demo-models --bases 8 --loras 64`: more models than one
     replica holds) and serves its generated config with `t2i serve` (2 BaseModel replicas,
     by default Ray's defaults: serve.multiplexed LRU, Ray's router; --policies coordinator for
     the coordinator set) on a free port;
  2. measures the running service into a simulator profile (`t2i profile`);
  3. writes a Katz-shaped synthetic trace (`t2i trace synth`);
  4. at each arrival rate, `t2i parity`: the same slice replayed live (open loop, Poisson
     arrivals) and simulated under ray-default shaped like the deployment, from the profile.
The table shows live and simulated p50, p95 and SLO violation rate per load level with the
relative errors; JSON goes to benchmarks/results/live_replay.json. Same machine, same models,
same replicas for both sides: the comparison is at equal cost by construction.

Each level (and the profile) runs on a freshly started service: the simulation starts with empty
caches, so the live side must too.

Run: python benchmarks/live_replay.py [--requests 200] [--rates 0.5,1.0,1.5 | --utilisations 0.3,0.5,0.7]
     [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import RESULTS, machine_info, write_result  # noqa: E402

T2I = [sys.executable, "-m", "app.cli"]
GOAL_REL_ERROR = 0.15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def t2i(*args: str, capture: bool = False) -> str:
    proc = subprocess.run([*T2I, *args], cwd=REPO, text=True, check=False,
                          stdout=subprocess.PIPE if capture else None)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"`t2i {' '.join(args[:2])} ...` failed with exit code {proc.returncode}")
    return proc.stdout or ""


def with_policies(config: Path, policies: str, out: Path, **control) -> Path:
    """A copy of `config` running the `policies` control set (plus other `control` fields)."""
    import yaml

    doc = yaml.safe_load(config.read_text())
    doc.setdefault("control", {}).update(policies=policies, **control)
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def katz_trace(out: Path, requests: int, seed: int) -> Path:
    """A Katz-shaped synthetic trace (`t2i trace synth`) with enough requests for a slice of
    `requests`, for the live benchmarks."""
    t2i("trace", "--no-progress", "synth", "--requests", str(max(2000, requests * 4)),
        "--instances", "8", "--base-models", "40", "--loras", "300", "--controlnets", "8",
        "--seed", str(seed), "--out", str(out))
    return out


def start_service(config: Path, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="t2i-ray-"))
    proc = subprocess.Popen([*T2I, "serve", "--config", str(config), "--port", str(port), "--num-cpus", "2"],
                            cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"t2i serve exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_service(proc)
    raise SystemExit(f"the service did not answer /healthz within 300 s; see {log}")


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # t2i serve stops Serve and Ray on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def fmt_row(rate, live, sim, rel) -> str:
    def r(k):
        v = rel.get(k)
        return "   n/a" if v is None else f"{v:+6.0%}"

    return (f"{rate:6.2f} | {live['latency_p50_s']:7.2f} {live['latency_p95_s']:7.2f} "
            f"{live['slo_violation_rate']:7.1%} | {sim['latency_p50_s']:7.2f} {sim['latency_p95_s']:7.2f} "
            f"{sim['slo_violation_rate']:7.1%} | {r('latency_p50_s')} {r('latency_p95_s')} "
            f"{r('slo_violation_rate')} | {live['load_seconds']:7.1f} {sim['load_seconds']:7.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per load level")
    ap.add_argument("--rates", default="0.5,1.0,1.5", help="arrival rates, requests/s")
    ap.add_argument("--utilisations", help="instead of --rates: load levels as fractions of the capacity "
                    "the profile gives the replicas for the slice's mix (`t2i parity --utilisation`), so "
                    "a slower or faster machine is loaded alike; e.g. 0.3,0.5,0.7")
    ap.add_argument("--bases", type=int, default=8)
    ap.add_argument("--loras", type=int, default=64)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--slo-s", type=float, default=1.0, help="latency SLO (default 1 s: the demo "
                    "config's 5 s is never missed at these loads, and a violation rate of 0 on both "
                    "sides says nothing about parity)")
    ap.add_argument("--policies", default="ray-default", choices=("ray-default", "coordinator"),
                    help="control set of the service and of its simulation (default: %(default)s, "
                    "what the recorded result measured)")
    ap.add_argument("--models", help="a many-model demo folder already built (with its config.yaml)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 requests, one rate")
    ap.add_argument("--out", default=str(RESULTS / "live_replay.json"))
    args = ap.parse_args()
    by_load = args.utilisations is not None
    levels = [float(x) for x in (args.utilisations if by_load else args.rates).split(",")]
    if args.quick:
        args.requests, levels = 20, levels[:1]
    work = Path(tempfile.mkdtemp(prefix="t2i-live-replay-"))
    t0 = time.time()
    try:
        models = Path(args.models) if args.models else work / "models"
        if not args.models:
            t2i("demo-models", "--out", str(models), "--bases", str(args.bases), "--loras", str(args.loras),
                "--replicas", str(args.replicas), "--quiet")
        config = with_policies(models / "config.yaml", args.policies, work / "config.yaml")
        trace = katz_trace(work / "katz.json", args.requests, args.seed + 1)
        profile = work / "profile.yaml"
        # The profile from its own fresh service; each level from a fresh one too, so live and
        # simulated runs both start with empty caches (the simulator cannot know what earlier
        # traffic left on a replica: that initial state was the largest parity gap measured).
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_service(config, port, work / "serve-profile.log")
        try:
            t2i("profile", "--url", url, "--config", str(config), "--out", str(profile), "--no-progress")
        finally:
            stop_service(proc)
        runs = []
        for level in levels:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_service(config, port, work / f"serve-{level}.log")
            try:
                out = t2i("parity", "--trace", str(trace), "--format", "katz", "--url", url,
                          "--config", str(config), "--profile", str(profile), "--arrival", "poisson",
                          "--utilisation" if by_load else "--rate", str(level), "--max-requests",
                          str(args.requests), "--slo-s", str(args.slo_s), "--seed", str(args.seed),
                          "--no-progress", "--json", "--out", str(work / f"parity-{level}"), capture=True)
            finally:
                stop_service(proc)
            doc = json.loads(out.strip().splitlines()[-1])
            doc["rate"] = doc["rate_from_capacity"]["rate"] if by_load else level
            doc["utilisation"] = level if by_load else None
            runs.append(doc)
            print(fmt_row(doc["rate"], doc["live"], doc["sim"], doc["relative_error"]), flush=True)
        print("\nlive vs simulated (ray-default shaped like the deployment), "
              f"{args.requests} requests per level, SLO {args.slo_s:g} s, {args.replicas} replicas")
        print("  rate |  live p50     p95   viol. |   sim p50     p95   viol. |  err p50  p95  viol. | load-s live  sim")
        for d in runs:
            print(fmt_row(d["rate"], d["live"], d["sim"], d["relative_error"]))
        within = {d["rate"]: all(abs(d["relative_error"].get(k) or 0) <= GOAL_REL_ERROR
                                 for k in ("latency_p50_s", "latency_p95_s", "slo_violation_rate"))
                  for d in runs}
        print(f"within {GOAL_REL_ERROR:.0%} on p50, p95 and violation rate: {within}")
        slim = [{k: d[k] for k in ("rate", "utilisation", "live", "sim", "relative_error", "difference", "gpus",
                                   "live_summary", "sim_summary")} for d in runs]
        write_result(args.out, {
            "benchmark": "live_replay", "goal": f"|relative error| <= {GOAL_REL_ERROR:.0%} on p50, p95 "
            "and SLO violation rate (issue: 200-request slice on this machine)",
            "policy_set": runs[0]["policy_set"] if runs else None,
            "profile": (work / "profile.yaml").read_text() if (work / "profile.yaml").exists() else None,
            "runs": slim, "within_goal": within, "args": vars(args), "wall_s": time.time() - t0,
            "machine": machine_info()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
