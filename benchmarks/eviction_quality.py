"""Benchmark: eviction quality, the default against the classic policies and Belady's MIN (issue 13).

Two parts, each against baselines in the same run:

1. Loads under the `t2i trace cache` rules (one cache of K unit-size adapter slots per instance;
   Belady's MIN is exact there): every policy x trace x K in {2, 4, 8, 16, 32}, as loads / MIN,
   and whether the default (`cost-aware`, with the live service's adapter prefetch) makes no more
   loads than the best of LRU, LFU, ARC, S3-FIFO, SIEVE and GDSF. Traces: GenTD26
   `data_trace_processed.csv` (skipped without ../shared/data) and Katz-shaped synthetic traces
   at three skews (ControlNet/LoRA Zipf exponents). Prefetch: `fill-popular` on the default
   eviction, with the prefetches used before eviction and loads against no prefetch.
2. Load-seconds in the cluster simulator (component byte sizes and load times by kind, fixed
   GPUs): Ray-style routing and per-replica caches by GPU bytes (the `lru` policy set) with only
   the eviction swapped, then the coordinator set with GDSF and with the default, on the
   katz-synth and GenTD26 workloads; ratios to per-replica LRU and to GDSF in the same set.

    python benchmarks/eviction_quality.py                    # writes JSON, prints the tables
    python benchmarks/eviction_quality.py --skip-simulator --requests 10000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import RESULTS, git, machine_info, write_result  # noqa: E402

BASELINES = ("lru", "lfu", "arc", "s3-fifo", "sieve", "gdsf")
OTHERS = ("cost-lrfu",)  # the previous default, for the record
CAPACITIES = (2, 4, 8, 16, 32)
SKEWS = (0.8, 1.0, 1.2)  # LoRA Zipf exponent; ControlNets 0.1 steeper (synth.py's default gap)
SIM_EVICTIONS = ("lru", "gdsf", "arc", "cost-lrfu", "cost-aware")


def traces(requests: int, seed: int, data: Path | None) -> dict:
    from trace_replay.formats import load_trace
    from trace_replay.synth import SynthConfig, write_katz_json

    out = {}
    proc = data / "data_trace_processed.csv" if data else None
    if proc is not None and proc.exists():
        out["gentd26"] = load_trace(proc, "gentd26-processed")
    else:
        print("gentd26 skipped: ../shared/data/gentd26/data_trace_processed.csv not found", flush=True)
    for z in SKEWS:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "synth.json"
            write_katz_json(SynthConfig(requests=requests, instances=8, seed=seed, lora_zipf=z,
                                        controlnet_zipf=z + 0.1), path)
            out[f"katz-zipf{z}"] = load_trace(path, "katz")
    return out


def loads_part(tables: dict, default: str, prefetch: str) -> list[dict]:
    import numpy as np

    from trace_replay.cache_sim import access_stream, run_cache, simulate_sequential
    from policies.eviction import EVICTION
    from policies.prefetch import PREFETCH
    from trace_replay.progress import progress

    rows = []
    policies = [*BASELINES, *OTHERS, default, "belady"]
    for label, table in tables.items():
        stream = access_stream(table)
        loads = {}
        for name in progress(policies, desc=f"{label}: policies"):
            t0 = time.perf_counter()
            pf = prefetch if name == default else "none"
            res = run_cache(table, name, list(CAPACITIES), pf, stream=stream)
            loads[name] = [res.summary(k)["loads"] for k in CAPACITIES]
            loads[name + "_wall_s"] = round(time.perf_counter() - t0, 2)
        for j, k in enumerate(CAPACITIES):
            best = min(BASELINES, key=lambda n: loads[n][j])
            opt = loads["belady"][j]
            row = {"trace": label, "capacity": k, "min_loads": opt, "best_baseline": best,
                   "best_baseline_loads": loads[best][j], "default": default, "default_prefetch": prefetch,
                   "default_loads": loads[default][j],
                   "default_vs_best": round(loads[default][j] / loads[best][j], 4),
                   "default_vs_min": round(loads[default][j] / opt, 4)}
            for n in policies:
                row[f"{n}_loads"] = loads[n][j]
                row[f"{n}_vs_min"] = round(loads[n][j] / opt, 4)
            rows.append(row)
        # prefetch: fill-popular on the default eviction, against none, with its use counted
        n_inst = len(stream.instances)
        for k in CAPACITIES:
            used = np.zeros(n_inst, dtype=np.int64)
            miss, pre = simulate_sequential(stream, EVICTION.create(default), k, PREFETCH.create("fill-popular"),
                                            prefetch_used=used)
            base = next(r for r in rows if r["trace"] == label and r["capacity"] == k)
            base.update({"fill_popular_loads": int(miss.sum() + pre.sum()), "fill_popular_prefetches": int(pre.sum()),
                         "fill_popular_used": int(used.sum())})
    return rows


def simulator_part(args, data: Path | None) -> list[dict]:
    from benchmarks._sim_workloads import gentd26, katz_synth
    from trace_replay.simulator import simulate
    from trace_replay.simulator.policy_sets import get_policy_set
    from trace_replay.simulator.workload import build_workload

    cases = [("katz-synth", katz_synth(args.sim_requests, args.gpus, args.seed, args.time_scale, args.slo_s))]
    g = None if data is None else gentd26(data, args.gentd26_gpus, args.seed)
    if g is not None:
        cases.append(("gentd26", g))
    rows = []
    for label, (table, cfg) in cases:
        wl, _ = build_workload(table, cfg, data)
        # only the eviction swapped under Ray-style routing; then the coordinator set (its router,
        # placement and bandit) with GDSF and with the default, against the same per-replica LRU;
        # and the coordinator without its bandit prefetch, to see what prefetching costs in loads
        runs = [("lru", ev, "ucb1") for ev in SIM_EVICTIONS] + [
            ("coordinator", "gdsf", "ucb1"), ("coordinator", "cost-aware", "ucb1"), ("coordinator", "cost-aware", "none")]
        for set_name, ev, prefetch in runs:
            spec = get_policy_set(set_name)
            update = {"name": f"{set_name}-set+{ev}", "eviction": ev}
            if spec.placement == "coordinator":
                update["placement_args"] = {**spec.placement_args, "prefetch": prefetch}
            else:
                prefetch = "none"  # the lru set has no pipeline prefetch
            spec = spec.model_copy(update=update)
            t0 = time.perf_counter()
            s = simulate(table, spec, cfg, workload=wl).summary
            rows.append({"workload": label, "policy_set": set_name, "eviction": ev, "prefetch": prefetch,
                         "gpus": cfg.cluster.gpus,
                         "requests": s["requests"],
                         "load_seconds": s["load_seconds"], "loads": s["loads"],
                         "prefetch_seconds": s["prefetch_seconds"],
                         "slo_violation_rate": s["slo_violation_rate"], "latency_p99_s": s["latency_p99_s"],
                         "sim_wall_s": round(time.perf_counter() - t0, 1)})
            print(f"  {label:10s} {set_name:11s} {ev:10s} {prefetch:5s} load-s {s['load_seconds']:10.0f}  loads {s['loads']:7d}  "
                  f"viol {s['slo_violation_rate']:6.2%}  p99 {s['latency_p99_s']:7.1f}", flush=True)
        mine = [r for r in rows if r["workload"] == label]
        lru = next(r for r in mine if r["policy_set"] == "lru" and r["eviction"] == "lru")
        for r in mine:  # GDSF of the same set and prefetch: only the eviction differs
            gdsf = next((g for g in mine if g["policy_set"] == r["policy_set"] and g["eviction"] == "gdsf"
                         and g["prefetch"] == r["prefetch"]), None)
            r["load_seconds_vs_lru"] = round(r["load_seconds"] / lru["load_seconds"], 4) if lru["load_seconds"] else None
            r["load_seconds_vs_gdsf"] = round(r["load_seconds"] / gdsf["load_seconds"], 4) if gdsf else None
    return rows


def print_loads(rows: list[dict]) -> None:
    cols = [*BASELINES, *OTHERS, rows[0]["default"]]
    print("\nloads / Belady MIN (t2i trace cache rules; default = " f"{rows[0]['default']}, prefetch "
          f"{rows[0]['default_prefetch']}; * = default beats or ties the best classic baseline)")
    print(f"{'trace':14s} {'K':>3s} " + " ".join(f"{c:>10s}" for c in cols) + f" {'MIN':>7s}  best")
    for r in rows:
        mark = "*" if r["default_loads"] <= r["best_baseline_loads"] else " "
        print(f"{r['trace']:14s} {r['capacity']:3d} " + " ".join(f"{r[c + '_vs_min']:10.3f}" for c in cols)
              + f" {r['min_loads']:7d}  {r['best_baseline']}{mark} ({r['default_vs_best']:.3f}x best)")
    print("\nfill-popular prefetch on the default: loads against none, prefetches used before eviction")
    for r in rows:
        print(f"{r['trace']:14s} {r['capacity']:3d}  loads {r['fill_popular_loads']:7d} vs {r['default_loads']:7d}"
              f"  prefetches {r['fill_popular_prefetches']:5d}, used {r['fill_popular_used']:5d}")


def print_sim(rows: list[dict]) -> None:
    print("\nsimulator load-seconds (component sizes, load times by kind; fixed GPUs; 'bandit': the "
          "coordinator's pipeline prefetch; 'ahead of demand': load-seconds of prefetches and placement pins)")
    print(f"{'workload':11s} {'set':12s} {'eviction':11s} {'bandit':8s} {'load-s':>10s} {'ahead of demand':>17s} "
          f"{'vs LRU':>7s} {'vs GDSF':>8s} {'loads':>7s} {'SLO viol':>8s}")
    for r in rows:
        gdsf = "     n/a" if r["load_seconds_vs_gdsf"] is None else f"{r['load_seconds_vs_gdsf']:8.3f}"
        print(f"{r['workload']:11s} {r['policy_set']:12s} {r['eviction']:11s} {r['prefetch']:8s} "
              f"{r['load_seconds']:10.0f} {r['prefetch_seconds']:17.0f} {r['load_seconds_vs_lru']:7.3f} {gdsf} "
              f"{r['loads']:7d} {r['slo_violation_rate']:8.2%}")


def main() -> int:
    from policies.defaults import DEFAULT_ADAPTER_PREFETCH, DEFAULT_EVICTION
    from trace_replay.paths import gentd26_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=30_000, help="requests per synthetic trace (part 1)")
    ap.add_argument("--sim-requests", type=int, default=100_000, help="katz-synth requests (part 2)")
    ap.add_argument("--gpus", type=int, default=20, help="katz-synth GPUs (part 2)")
    ap.add_argument("--gentd26-gpus", type=int, default=64)
    ap.add_argument("--time-scale", type=float, default=10.0)
    ap.add_argument("--slo-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-simulator", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "eviction_quality.json"))
    args = ap.parse_args()
    data = gentd26_dir()
    t0 = time.perf_counter()
    rows = loads_part(traces(args.requests, args.seed, data), DEFAULT_EVICTION, DEFAULT_ADAPTER_PREFETCH)
    print_loads(rows)
    sim = [] if args.skip_simulator else simulator_part(args, data)
    if sim:
        print_sim(sim)
    wins = sum(r["default_loads"] <= r["best_baseline_loads"] for r in rows)
    print(f"\ndefault beats or ties the best classic baseline at {wins}/{len(rows)} (trace, K) points; "
          f"worst {max(r['default_vs_best'] for r in rows):.3f}x best, "
          f"{max(r['default_vs_min'] for r in rows):.3f}x MIN at most")
    doc = {"benchmark": "eviction_quality", "baselines": list(BASELINES), "default": DEFAULT_EVICTION,
           "loads": rows, "simulator": sim, "wall_s": round(time.perf_counter() - t0, 1),
           "git_commit": git("rev-parse", "--short", "HEAD"), "args": vars(args), "machine": machine_info()}
    write_result(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
