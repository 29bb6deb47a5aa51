"""The live cascade under a rising and falling arrival rate: the demand planner against a fixed
threshold, on the same replicas.

End to end, with the real commands:
  1. builds the demo models (`t2i demo-models --replicas 4`: tiny-sd-light, tiny-sd-heavy and the
     tiny discriminator, four BaseModel replicas on this machine's cores);
  2. writes a DiffServe-format arrival file whose rate rises from `--low` to `--high` requests/s
     and falls back (a triangle over `--duration-s`, Poisson arrivals by thinning);
  3. per arm, on a freshly started service with `cascade.enabled: true`: a calibration of 24
     requests with `cascade_threshold: 0` (light images and their scores only), then `t2i replay
     --format diffserve --arrival trace` of the arrival file, while a poller records
     `GET /v1/cascade` every `--poll-s` seconds;
  4. prints one table, writes benchmarks/results/live_cascade.json and a figure
     (benchmarks/results/live_cascade.png: the arrival rate, the planner's deferred share and
     cutoff, and its replicas per stage over time).

Arms (equal cost: the same four BaseModel replicas, one discriminator replica, same machine):
- `fixed`: `cascade.planner: fixed`, threshold = the median score of the calibration requests,
  so about half the queries are deferred (DiffServe's static cascade defers the grid point
  closest to half);
- `demand`: `cascade.planner: demand` (the coordinator's policies.cascade_planner), starting
  from the same threshold until it has measurements, with `cascade.planner_replicas` = this
  machine's cores (at most 4): the replicas share them, so no more than that compute at once;
- `fixed-matched`: a fixed threshold deferring the share of queries the `demand` arm answered with
  the heavy model (that quantile of the calibration scores): the same quality as ours on
  average, spent evenly instead of where demand leaves room.
The goal (issue 11): the plan follows demand, and SLO violations are lower than the fixed
threshold's at the same replicas. Quality is reported as the share answered by the heavy model
(the discriminator is the demo's random-weight one: it scores every image about 0.541, so the
scores' order carries no image-quality meaning here; the comparison is about following demand).

Run: python benchmarks/live_cascade.py [--duration-s 240] [--low 0.3] [--high 3.0] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import RESULTS, machine_info, write_result  # noqa: E402
from benchmarks.live_replay import free_port, start_service, stop_service, t2i  # noqa: E402

ARMS = ("fixed", "demand", "fixed-matched")
CALIBRATION_REQUESTS = 24


def triangle_arrivals(path: Path, duration_s: float, low: float, high: float, seed: int) -> int:
    """Poisson arrivals whose rate rises linearly from `low` to `high` at mid-run and falls back,
    as DiffServe's arrival format (`<ms>,<prompt index>` per line). Returns the count."""
    rng = np.random.default_rng(seed)
    times, t = [], 0.0
    while True:  # thinning: candidates at the peak rate, each kept with rate(t) / high
        t += rng.exponential(1.0 / high)
        if t >= duration_s:
            break
        rate = low + (high - low) * (1.0 - abs(t - duration_s / 2) / (duration_s / 2))
        if rng.random() < rate / high:
            times.append(t)
    prompts = rng.integers(1, 5001, len(times))
    path.write_text("".join(f"{1000 * x:.1f},{p}\n" for x, p in zip(times, prompts)))
    return len(times)


def arm_config(base: Path, out: Path, planner: str, threshold: float, slo_s: float) -> Path:
    doc = yaml.safe_load(base.read_text())
    # the four replicas share this machine's cores: the planner may count only that many as
    # computing at once (on a GPU cluster every replica has its own GPU and this is left unset)
    doc["cascade"].update(enabled=True, planner=planner, threshold=round(float(threshold), 6),
                          planner_replicas=min(4, os.cpu_count() or 1))
    doc["slo"] = {**(doc.get("slo") or {}), "latency_s": slo_s}
    doc.setdefault("control", {})["policies"] = "coordinator"
    # queued work may wait past the SLO (counted as a violation, not dropped at 4 x SLO)
    doc.setdefault("limits", {})["request_timeout_s"] = 20 * slo_s
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def calibrate(url: str) -> list[float]:
    """Scores of light images (threshold 0: nothing deferred); also warms every path up."""
    scores = []
    with httpx.Client(base_url=url, timeout=120) as http:
        for k in range(CALIBRATION_REQUESTS):
            r = http.post("/v1/images/generations", json={"prompt": f"calibration {k}", "seed": 1000 + k,
                                                          "cascade": True, "cascade_threshold": 0.0})
            r.raise_for_status()
            scores += r.json()["t2i"]["cascade"]["scores"]
    return scores


class Poller:
    """GET /v1/cascade every `period_s` in a thread, timestamped from `start`."""

    def __init__(self, url: str, period_s: float) -> None:
        self.url, self.period_s = url, period_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.t0 = time.time()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self._stop.wait(self.period_s):
                try:
                    doc = http.get("/v1/cascade").json()
                except (httpx.HTTPError, ValueError):
                    continue
                plan = doc.get("plan") or {}
                self.samples.append({"t": round(time.time() - self.t0, 2), **{k: plan.get(k) for k in (
                    "source", "threshold", "deferred_fraction", "light_replicas", "heavy_replicas",
                    "demand_qps", "rate_estimate_qps", "light_service_s", "heavy_service_s")}})


def heavy_share(records: Path, heavy: str) -> float | None:
    with records.open() as f:
        rows = [r for r in csv.DictReader(f) if r["outcome"] == "completed"]
    return sum(r["model"] == heavy for r in rows) / len(rows) if rows else None


def figure(path: Path, runs: dict, arrivals: np.ndarray, duration_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    edges = np.arange(0, duration_s + 10, 10)
    axes[0].bar(edges[:-1], np.histogram(arrivals, edges)[0] / 10, width=10, align="edge", alpha=0.4,
                label="arrivals (per 10 s)")
    for arm, doc in runs.items():
        tl = [s for s in doc["timeline"] if s["source"] == "planner"]
        if arm == "demand" and tl:
            t = [s["t"] for s in tl]
            axes[0].plot(t, [s["rate_estimate_qps"] for s in tl], label="planner's rate estimate")
            axes[0].plot(t, [s["demand_qps"] for s in tl], "--", label="demand planned for")
            axes[1].plot(t, [s["deferred_fraction"] for s in tl], label="planner: deferred share")
            axes[1].plot(t, [s["threshold"] for s in tl], ":", label="planner: score cutoff")
            axes[2].step(t, [s["light_replicas"] for s in tl], where="post", label="light replicas")
            axes[2].step(t, [s["heavy_replicas"] for s in tl], where="post", label="heavy replicas")
    for arm, style in (("fixed", "-"), ("fixed-matched", "--")):
        if arm in runs:
            axes[1].axhline(runs[arm]["threshold"], color="grey", lw=1, ls=style, label=f"{arm} arm: threshold")
    axes[0].set_ylabel("requests/s")
    axes[1].set_ylabel("share / score")
    axes[2].set_ylabel("replicas")
    axes[2].set_xlabel("seconds into the replay")
    for ax in axes:
        ax.legend(fontsize=7, loc="upper right")
    viol = ", ".join(f"{a}: {d['summary']['slo_violation_rate']:.1%} late" for a, d in runs.items())
    fig.suptitle(f"Live cascade under a rising and falling rate ({viol})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration-s", type=float, default=240.0, help="length of the arrival triangle")
    ap.add_argument("--low", type=float, default=0.3, help="arrival rate at the start and end, requests/s")
    ap.add_argument("--high", type=float, default=3.0, help="arrival rate at the peak, requests/s")
    ap.add_argument("--slo-s", type=float, default=4.0, help="latency SLO the violations count against")
    ap.add_argument("--poll-s", type=float, default=2.0, help="GET /v1/cascade period")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 60 s triangle")
    ap.add_argument("--out", default=str(RESULTS / "live_cascade.json"))
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if set(arms) - set(ARMS):
        ap.error(f"unknown arms {sorted(set(arms) - set(ARMS))}; choose from {list(ARMS)}")
    if args.quick:
        args.duration_s = 60.0
    work = Path(tempfile.mkdtemp(prefix="t2i-live-cascade-"))
    t0 = time.time()
    try:
        models = work / "models"
        t2i("demo-models", "--out", str(models), "--replicas", "4", "--quiet")
        trace = work / "arrivals" / "triangle.txt"
        trace.parent.mkdir()
        n = triangle_arrivals(trace, args.duration_s, args.low, args.high, args.seed)
        arrivals = np.array([float(line.split(",")[0]) / 1000 for line in trace.read_text().splitlines()])
        heavy_id = yaml.safe_load((models / "config.yaml").read_text())["cascade"]["heavy"]
        runs: dict = {}
        threshold, calibration = None, []
        for arm in arms:
            start = threshold  # every arm starts from the first arm's calibration median
            if arm == "fixed-matched":
                if "demand" not in runs or not calibration:
                    raise SystemExit("fixed-matched needs the fixed (or first) and demand arms before it")
                start = float(np.quantile(calibration, runs["demand"]["heavy_share"]))
            planner = "demand" if arm == "demand" else "fixed"
            config = arm_config(models / "config.yaml", work / f"config-{arm}.yaml", planner,
                                0.5 if start is None else start, args.slo_s)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_service(config, port, work / f"serve-{arm}.log")
            try:
                scores = calibrate(url)
                if threshold is None:
                    threshold, calibration = statistics.median(scores), scores
                    start = threshold
                    config = arm_config(models / "config.yaml", config, planner, threshold, args.slo_s)
                    stop_service(proc)  # restart so the fixed threshold is the config's
                    proc = start_service(config, port, work / f"serve-{arm}.log")
                    calibrate(url)
                poller = Poller(url, args.poll_s)
                poller.start()
                out = t2i("replay", "--trace", str(trace), "--format", "diffserve", "--url", url,
                          "--arrival", "trace", "--max-requests", str(n), "--slo-s", str(args.slo_s),
                          "--seed", str(args.seed), "--no-progress", "--json", "--out", str(work / f"replay-{arm}"),
                          capture=True)
                poller.stop()
            finally:
                stop_service(proc)
            summary = json.loads(out.strip().splitlines()[-1])
            runs[arm] = {"threshold": start, "calibration_scores": [round(s, 4) for s in scores],
                         "heavy_share": heavy_share(work / f"replay-{arm}" / "records.csv", heavy_id),
                         "summary": {k: summary.get(k) for k in (
                             "requests", "completed", "slo_violations", "slo_violation_rate", "latency_p50_s",
                             "latency_p95_s", "latency_p99_s", "failed", "timed_out", "duration_s")},
                         "timeline": poller.samples}
            s = runs[arm]["summary"]
            print(f"{arm:13s} late {s['slo_violation_rate']:6.1%}  p50 {s['latency_p50_s']:5.2f} s  p99 "
                  f"{s['latency_p99_s']:5.2f} s  heavy share {runs[arm]['heavy_share'] or 0:5.1%}", flush=True)
        print(f"\n{n} requests, rate {args.low:g} -> {args.high:g} -> {args.low:g} req/s over {args.duration_s:g} s, "
              f"SLO {args.slo_s:g} s; 4 BaseModel replicas + 1 discriminator on {machine_info()['cpus']} cores")
        print(f"{'arm':13s} {'late':>7s} {'p50 s':>6s} {'p99 s':>6s} {'heavy':>6s} {'plans seen':>10s}")
        for arm, doc in runs.items():
            s = doc["summary"]
            plans = sum(1 for x in doc["timeline"] if x["source"] == "planner")
            print(f"{arm:13s} {s['slo_violation_rate']:7.1%} {s['latency_p50_s']:6.2f} {s['latency_p99_s']:6.2f} "
                  f"{doc['heavy_share'] or 0:6.1%} {plans:10d}")
        ratio = None
        if {"fixed", "demand"} <= set(runs) and runs["fixed"]["summary"]["slo_violation_rate"]:
            ratio = runs["demand"]["summary"]["slo_violation_rate"] / runs["fixed"]["summary"]["slo_violation_rate"]
            print(f"demand vs fixed: violations x{ratio:.2f}")
        if {"fixed-matched", "demand"} <= set(runs):
            m, d = runs["fixed-matched"], runs["demand"]
            print(f"demand vs fixed-matched (heavy share {m['heavy_share'] or 0:.1%} vs {d['heavy_share'] or 0:.1%}): "
                  f"violations {d['summary']['slo_violation_rate']:.1%} vs {m['summary']['slo_violation_rate']:.1%}")
        png = Path(args.out).with_suffix(".png")
        figure(png, runs, arrivals, args.duration_s)
        print(f"wrote {png}")
        write_result(args.out, {
            "benchmark": "live_cascade",
            "goal": "the plan follows demand; fewer SLO violations than a fixed threshold at the same replicas",
            "cost": "same 4 BaseModel replicas and 1 discriminator replica on the same machine, fresh service per arm",
            "requests": n, "violation_ratio_demand_vs_fixed": ratio, "runs": runs, "args": vars(args),
            "wall_s": time.time() - t0, "machine": machine_info()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
