"""Benchmark: per-decision cost of the pure policies at cluster scale, and cost-aware eviction's
misses against LRU/LFU/Belady on a synthetic trace.

Why: the discrete-event simulator must do >= 50k simulated requests/s on one core and calls a
router per request, so routing must stay well under 20 us; placement and scale-down run on
control ticks and must stay in milliseconds. Times are medians of `--repeats` rounds in which the
routers alternate, reported with `random` (the cheapest possible router) as the in-run baseline.

    python benchmarks/policy_speed.py                 # prints tables, writes JSON
    python benchmarks/policy_speed.py --quick         # smoke run (seconds, not a measurement)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.autoscaling import SCALE_DOWN  # noqa: E402
from policies.placement import PLACEMENT, PlacementContext  # noqa: E402
from policies.popularity import POPULARITY, bands_by_rank  # noqa: E402
from policies.routing import ROUTING  # noqa: E402
from policies.snapshot import (BASE, CONTROLNET, GPU, LORA, ClusterSnapshot, ComponentTable,  # noqa: E402
                               PipelineIndex, PipelineKey, RouteRequest, freeze, make_replicas)

RESULTS = ROOT / "benchmarks" / "results"


def cluster(rng: np.random.Generator, R: int, n_base: int, n_cn: int, n_lora: int):
    C = n_base + n_cn + n_lora
    kind = np.r_[np.full(n_base, BASE), np.full(n_cn, CONTROLNET), np.full(n_lora, LORA)].astype(np.int8)
    size = np.where(kind == BASE, 6e9, np.where(kind == LORA, 3e8, 2.5e9)).astype(np.int64)
    remote = np.where(kind == BASE, 22.6, np.where(kind == LORA, 4.6, 5.1))
    comp = ComponentTable(kind, size, np.c_[np.zeros(C), 0.1 * remote, 0.4 * remote, remote])
    rep = make_replicas(R, C, 80 * 10**9)
    rep.tier[rng.random((R, C)) < 0.01] = GPU
    rep.busy_until[:] = rng.random(R) * 60
    rep.queue_len[:] = rng.integers(0, 6, R)
    return freeze(ClusterSnapshot(30.0, rep, comp))


def pipelines(rng: np.random.Generator, n: int, n_base: int, n_cn: int, n_lora: int) -> list[PipelineKey]:
    out = []
    for _ in range(n):
        b = int(min(rng.zipf(1.3), n_base) - 1)
        cn = [n_base + int(rng.integers(n_cn))] if rng.random() < 0.45 else []
        lo = [n_base + n_cn + int(min(rng.zipf(1.2), n_lora) - 1)] if rng.random() < 0.55 else []
        out.append(PipelineKey.of(b, cn, lo))
    return out


def route_times(snap: ClusterSnapshot, reqs: list[RouteRequest], repeats: int) -> dict[str, float]:
    names = ROUTING.names()
    routers = {n: ROUTING.create(n) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        for n in names:  # alternate routers within each round
            r = routers[n]
            t = time.perf_counter()
            for q in reqs:
                r.route(snap, q, rng)
            times[n].append((time.perf_counter() - t) / len(reqs) * 1e6)
    return {n: float(np.median(v)) for n, v in times.items()}


def tick_times(rng: np.random.Generator, snap: ClusterSnapshot, keys: list[PipelineKey], repeats: int) -> dict:
    pop = POPULARITY.create("decayed")
    state = pop.new_state()
    index = PipelineIndex()
    t0 = time.perf_counter()
    for i, k in enumerate(keys):
        pop.observe(state, index.intern(k), float(i) * 0.01)
    observe_us = (time.perf_counter() - t0) / len(keys) * 1e6
    now = len(keys) * 0.01
    demand = pop.scores(state, now)
    ctx = PlacementContext(snap, demand, bands_by_rank(demand, 0.05, 0.25),
                           [index.components(p) for p in range(len(index))],
                           np.full(snap.replicas.n, 80 * 10**9, np.int64))
    placer, down = PLACEMENT.create("popularity-bands"), SCALE_DOWN.create("cache-aware")
    comp_demand = rng.random(snap.components.n)
    plan_ms, down_ms = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        plan = placer.plan(ctx)
        plan_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        down.choose(snap, comp_demand, 1)
        down_ms.append((time.perf_counter() - t) * 1e3)
    return {"pipelines": len(index), "hot": int(plan.pipelines.size), "pins": int(plan.pin_pipeline.size),
            "observe_intern_us": observe_us, "placement_ms": float(np.median(plan_ms)),
            "scale_down_1_ms": float(np.median(down_ms))}


def eviction_misses(requests: int, instances: int, capacities: list[int]) -> dict[str, list[int]]:
    from trace_replay.cache_sim import run_cache
    from trace_replay.formats.katz import load_katz
    from trace_replay.synth import SynthConfig, write_katz_json

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "synth.json"
        write_katz_json(SynthConfig(requests=requests, instances=instances, seed=1), path)
        table = load_katz(path)
    return {p: run_cache(table, p, capacities).misses.sum(axis=0).tolist()
            for p in ("lru", "lfu", "cost-aware", "belady")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, nargs="+", default=[32, 300])
    ap.add_argument("--components", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=5000, help="routed requests per router per round")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trace-requests", type=int, default=60000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "policy_speed.json"))
    args = ap.parse_args()
    if args.quick:
        args.requests, args.repeats, args.trace_requests = 300, 1, 20000
    rng = np.random.default_rng(0)
    n_base, n_cn = 200, 60
    n_lora = args.components - n_base - n_cn
    routing, ticks = {}, {}
    for R in args.replicas:
        snap = cluster(rng, R, n_base, n_cn, n_lora)
        keys = pipelines(rng, 20000 if not args.quick else 2000, n_base, n_cn, n_lora)
        reqs = [freeze(RouteRequest(i, k.components(), int(rng.integers(3))))
                for i, k in enumerate(keys[: args.requests])]
        routing[str(R)] = route_times(snap, reqs, args.repeats)
        ticks[str(R)] = tick_times(rng, snap, keys, args.repeats)
    caps = [2, 4, 8, 16]
    misses = eviction_misses(args.trace_requests, 8, caps)

    print(f"routing, us per request (median of {args.repeats} alternating rounds), {args.components} components")
    print(f"{'replicas':>9} " + " ".join(f"{n:>24}" for n in ROUTING.names()) + "   x random")
    for R, t in routing.items():
        ratio = " ".join(f"{n}={t[n] / t['random']:.1f}" for n in t if n != "random")
        print(f"{R:>9} " + " ".join(f"{t[n]:>24.1f}" for n in ROUTING.names()) + "   " + ratio)
    print("\ncontrol ticks")
    for R, t in ticks.items():
        print(f"  R={R}: {t}")
    print(f"\nadapter cache misses, synthetic trace ({args.trace_requests} requests, 8 instances), capacities {caps}")
    for p, m in misses.items():
        print(f"  {p:>11}: {m}  ({', '.join(f'{x / y:.3f}' for x, y in zip(m, misses['lru']))} x LRU)")

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_1m": os.getloadavg()[0]},
              "commit": commit, "config": vars(args), "routing_us": routing, "ticks": ticks,
              "eviction_misses": {"capacities": caps, **misses},
              "goal": {"route_us_max": 20.0,
                       "pass": all(v < 20.0 for t in routing.values() for v in t.values())}}
    if not args.quick:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
