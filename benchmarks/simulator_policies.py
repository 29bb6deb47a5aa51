"""Benchmark: policy sets compared in the simulator on identical workloads (issue 4, section 3).

Every set runs on the same sampled workload (same arrivals, service times, sizes and load-time
samples), so differences are the policies'. Baseline in the same run: `ray-default` (Ray Serve
out of the box); rows report ratios to it. Workloads:

- `katz-synth`: a Katz-shaped synthetic trace (`t2i trace synth`, seeded), arrivals compressed
  by --time-scale so the cluster is busy enough for caching and queueing to matter;
- `gentd26`: the first 40k rows of GenTD26 `data_trace_processed.csv` (real base-model and LoRA
  ids), arrivals a Poisson process shaped like its `qps.csv`, service time = the trace's exec
  seconds (skipped when ../shared/data is absent).

    python benchmarks/simulator_policies.py                       # writes JSON, prints a table
    python benchmarks/simulator_policies.py --requests 100000 --gpus 20 --skip-gentd26
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import RESULTS, git, write_result  # noqa: E402
from benchmarks._sim_workloads import gentd26, katz_synth  # noqa: E402
KEYS = ("slo_violation_rate", "latency_mean_s", "latency_p50_s", "latency_p95_s", "latency_p99_s",
        "load_seconds", "demand_load_seconds", "prefetch_seconds", "loads", "requests_with_miss",
        "gpu_busy_seconds", "gpu_active_seconds", "gpu_busy_fraction", "queue_len_mean", "queue_wait_mean_s", "sim_wall_s")


def ablations() -> list:
    """Variants that attribute the coordinator's gain (its router alone on LRU; the coordinator
    without placement and bandit prefetch) and that run the routers of policies/routing.py."""
    from trace_replay.simulator.policy_sets import get_policy_set

    return [get_policy_set("lru").model_copy(update={"name": "lru+least-expected-latency", "routing": "policy",
                                                     "routing_args": {"policy": "least-expected-latency",
                                                                      "band_pools": False}}),
            get_policy_set("coordinator").model_copy(update={"name": "coordinator-no-placement",
                                                             "placement": "none", "tick_s": 0.0}),
            # the coordinator without load ahead (a queued request loads only when it starts)
            get_policy_set("coordinator").model_copy(update={"name": "coordinator-no-ahead", "load_ahead": False}),
            # load ahead from any tier, the local disk tier too, as before the H200 overlap
            # measurement (benchmarks/load_overlap.py); and from the host tier only
            get_policy_set("coordinator").model_copy(update={"name": "coordinator-ahead-any",
                                                             "load_ahead_from": "any"}),
            get_policy_set("coordinator").model_copy(update={"name": "coordinator-ahead-host",
                                                             "load_ahead_from": "host"}),
            # a hot pipeline the hot pool has no room for pinned outside it (policies.placement spill)
            get_policy_set("coordinator").model_copy(update={
                "name": "coordinator-spill", "placement_args": {"placement_args": {"fuse_top": 0, "spill": True}}}),
            # the coordinator with band pools on (hot requests may use any replica, others only shared)
            get_policy_set("coordinator").model_copy(update={
                "name": "coordinator+band-pools", "routing_args": {"policy": "least-expected-latency",
                                                                   "band_pools": True}}),
            # the coordinator with the simulator's fast sampled router instead of policies.routing
            get_policy_set("coordinator").model_copy(update={
                "name": "coordinator-fast-router", "routing": "cache-aware", "routing_args": {}}),
            # Ray's router as policies/routing.py writes it (no router-side hold), against control.py's
            get_policy_set("lru").model_copy(update={
                "name": "lru+policies.ray-multiplex", "routing": "policy",
                "routing_args": {"policy": "ray-multiplex"}})]


def compare(label: str, table, cfg, sets: list, data_dir) -> list[dict]:
    from trace_replay.simulator import simulate
    from trace_replay.simulator.workload import build_workload

    wl, notes = build_workload(table, cfg, data_dir)
    rows = []
    for spec in sets:
        s = simulate(table, spec, cfg, workload=wl).summary
        name = s["policy_set"]
        rows.append({"workload": label, "policy_set": name, "requests": s["requests"], "gpus": cfg.cluster.gpus,
                     "slo_s": cfg.slo_s, "time_scale": cfg.time_scale,
                     **{k: s[k] for k in KEYS}, "notes": notes})
        print(f"  {label:11s} {name:17s} SLO viol {s['slo_violation_rate']:7.2%}  p50 {s['latency_p50_s']:7.1f}  "
              f"p99 {s['latency_p99_s']:8.1f}  load-s {s['load_seconds']:10.0f}  busy {s['gpu_busy_fraction']:.1%}  "
              f"queue {s['queue_len_mean']:.2f}  ({s['sim_wall_s']:.0f} s)", flush=True)
    base = next((r for r in rows if r["policy_set"] == "ray-default"), None)
    if base:
        for r in rows:
            for k in ("slo_violation_rate", "latency_mean_s", "latency_p99_s", "load_seconds", "queue_len_mean"):
                r[f"{k}_vs_ray_default"] = round(r[k] / base[k], 4) if base[k] else None
    return rows


def main() -> int:
    from trace_replay.paths import gentd26_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=550_000)
    ap.add_argument("--gpus", type=int, default=100)
    ap.add_argument("--time-scale", type=float, default=10.0)
    ap.add_argument("--slo-s", type=float, default=30.0)
    ap.add_argument("--sets", default="ray-default,lru,lfu,diffserve-static,coordinator,coordinator-lean,"
                                      "coordinator-autoscaled")
    ap.add_argument("--gentd26-gpus", type=int, default=64)
    ap.add_argument("--gentd26-qps", type=float, default=0.5, help="mean arrival rate of the GenTD26 rows "
                    "(their exec seconds average 26 s: 0.5 req/s is ~20%% of 64 GPUs in compute, peaks 2.9x the mean)")
    ap.add_argument("--gentd26-slo-s", type=float, default=60.0, help="SLO for the GenTD26 rows (median exec 23 s)")
    ap.add_argument("--skip-gentd26", action="store_true")
    ap.add_argument("--no-ablations", action="store_true", help="skip the coordinator ablation variants")
    ap.add_argument("--ablations", default="all", help="comma-separated names of the ablation variants to "
                    "run (e.g. coordinator-no-ahead), or all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "simulator_policies.json"))
    args = ap.parse_args()
    sets: list = [s.strip() for s in args.sets.split(",")]
    if not args.no_ablations:
        variants = ablations()
        if args.ablations != "all":
            wanted = {a.strip() for a in args.ablations.split(",")}
            unknown = wanted - {v.name for v in variants}
            if unknown:
                ap.error(f"unknown ablations {sorted(unknown)}; choose from {[v.name for v in variants]}")
            variants = [v for v in variants if v.name in wanted]
        sets += variants
    data = gentd26_dir()
    rows: list[dict] = []
    t0 = time.perf_counter()
    table, cfg = katz_synth(args.requests, args.gpus, args.seed, args.time_scale, args.slo_s)
    rows += compare("katz-synth", table, cfg, sets, data)
    case = None if args.skip_gentd26 else gentd26(data, args.gentd26_gpus, args.seed, args.gentd26_qps,
                                                  args.gentd26_slo_s)
    if case is not None:
        rows += compare("gentd26", *case, sets, data)
    doc = {"benchmark": "simulator_policies", "baseline": "ray-default", "rows": rows,
           "wall_s": round(time.perf_counter() - t0, 1), "git_commit": git("rev-parse", "--short", "HEAD"), "args": vars(args),
           "machine": {"python": platform.python_version(), "platform": platform.platform()}}
    write_result(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
