"""Benchmark: generate, load and analyse a 3.5M-request synthetic trace on this machine.

Goals (issue 3): load under 10 s, the whole analysis under 60 s, peak memory under 4 GB.
Each phase runs in its own process so its peak RSS is its own (children included: the cache
sweep forks workers). Baselines in the same run, as ratios: the Arrow fast loader against the
exact object-by-object loader, and the lock-step cache engine against the sequential one, on a
prefix of the same trace.

    python benchmarks/trace_toolkit.py                 # full size, prints a table, writes JSON
    python benchmarks/trace_toolkit.py --requests 200000 --instances 40   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS, write_result  # noqa: E402


def _peak_mb() -> float:
    """Peak RSS of this process plus the largest forked cache worker (ru_maxrss is KiB on Linux).

    Conservative: a forked worker's RSS counts pages it shares with the parent a second time.
    """
    return _self_mb() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def _self_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def phase_synth(args: argparse.Namespace) -> dict:
    from trace_replay.synth import SynthConfig, write_katz_json

    t0 = time.perf_counter()
    write_katz_json(SynthConfig(requests=args.requests, instances=args.instances, seed=args.seed), args.trace)
    return {"synth_s": time.perf_counter() - t0, "trace_mb": Path(args.trace).stat().st_size / 2**20,
            "peak_mb": _peak_mb()}


def phase_analyse(args: argparse.Namespace) -> dict:
    from trace_replay.analysis import loading, workload
    from trace_replay.formats.katz import load_katz
    from trace_replay.table import CONTROLNET, LORA

    out: dict[str, object] = {}
    t0 = time.perf_counter()
    table = load_katz(args.trace)
    out["load_s"] = time.perf_counter() - t0
    out["peak_after_load_mb"] = _self_mb()
    out["requests"], out["adapter_accesses"] = len(table), table.n_adapters
    out["instances"] = len(table.instances)
    steps = {
        "stats": lambda: workload.service_stats(table, args.fig_dir),
        "controlnet": lambda: workload.invocation(table, CONTROLNET, args.fig_dir),
        "lora": lambda: workload.invocation(table, LORA, args.fig_dir),
        "unique_loras": lambda: workload.unique_loras(table, args.fig_dir),
        "adapter_loading": lambda: loading.adapter_loading(table, ["lru", "lfu", "belady"], list(range(1, 17)),
                                                           workers=args.workers, out_dir=args.fig_dir),
    }
    for name, fn in steps.items():
        t1 = time.perf_counter()
        res = fn()
        out[f"{name}_s"] = time.perf_counter() - t1
        if name == "adapter_loading":
            rows = res[0]
            out["loads_all_services"] = {
                p: {str(k): sum(r["loads"] for r in rows if r["policy"] == p and r["capacity"] == k)
                    for k in (1, 2, 4, 8, 16)} for p in ("lru", "lfu", "belady")}
    out["analysis_s"] = sum(out[f"{n}_s"] for n in steps)
    out["load_plus_analysis_s"] = out["load_s"] + out["analysis_s"]
    out["peak_mb"] = _peak_mb()
    out["peak_main_process_mb"] = _self_mb()
    return out


def phase_baselines(args: argparse.Namespace) -> dict:
    """Fast vs exact loader and lock-step vs sequential cache engine on a prefix of the trace."""
    from trace_replay.cache_sim import access_stream, simulate_lockstep, simulate_sequential
    from policies.eviction import EVICTION
    from trace_replay.formats.katz import _exact, load_katz

    prefix = Path(args.trace).with_name("prefix.json")
    with open(args.trace, encoding="utf-8") as f, open(prefix, "w", encoding="utf-8") as g:
        lines = [next(f) for _ in range(args.baseline_requests + 1)]  # "[" and one object per line
        g.write("".join(lines).rstrip().rstrip(",") + "\n]\n")
    t0 = time.perf_counter()
    table = load_katz(prefix)
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    _exact(prefix, prefix.read_text(encoding="utf-8"), False)
    exact = time.perf_counter() - t0
    stream = access_stream(table)
    lru = EVICTION.create("lru")
    t0 = time.perf_counter()
    lock = simulate_lockstep(stream, lru, [8])
    lock_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    seq, _ = simulate_sequential(stream, lru, 8)
    seq_s = time.perf_counter() - t0
    assert int(lock.sum()) == int(seq.sum()), "engines disagree"
    return {"baseline_requests": len(table), "load_fast_s": fast, "load_exact_s": exact,
            "load_speedup": exact / fast, "cache_lockstep_s": lock_s, "cache_sequential_s": seq_s,
            "cache_speedup_one_capacity": seq_s / lock_s}


def _child(phase: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--trace", str(args.trace), "--requests", str(args.requests),
           "--instances", str(args.instances), "--seed", str(args.seed), "--workers", str(args.workers),
           "--fig-dir", str(args.fig_dir), "--baseline-requests", str(args.baseline_requests)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3_500_000)
    ap.add_argument("--instances", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-requests", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3, help="analysis runs; medians are reported")
    ap.add_argument("--trace", help="where the synthetic trace goes (default: a temporary folder)")
    ap.add_argument("--fig-dir", help="keep the figures here (default: a temporary folder)")
    ap.add_argument("--out", default=str(RESULTS / "trace_toolkit.json"))
    ap.add_argument("--phase", choices=["synth", "analyse", "baselines"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        fn = {"synth": phase_synth, "analyse": phase_analyse, "baselines": phase_baselines}[args.phase]
        print(json.dumps(fn(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        args.trace = args.trace or str(Path(tmp) / "synth.json")
        args.fig_dir = args.fig_dir or str(Path(tmp) / "figures")
        load_before = os.getloadavg()
        synth = _child("synth", args)
        # the machine is shared: run the analysis several times, report the median of each step
        runs = [_child("analyse", args) for _ in range(args.repeats)]
        analyse = {k: (statistics.median(r[k] for r in runs) if isinstance(v, float) else v)
                   for k, v in runs[0].items()}
        for k in ("peak_mb", "peak_main_process_mb", "peak_after_load_mb"):
            analyse[k] = max(r[k] for r in runs)
        analyse["runs_load_plus_analysis_s"] = [r["load_plus_analysis_s"] for r in runs]
        base = _child("baselines", args)
        load_after = os.getloadavg()
    goals = {"load_s": 10.0, "load_plus_analysis_s": 60.0, "peak_mb": 4096.0}
    rows = [("synth (generate + write JSON)", synth["synth_s"], synth["peak_mb"], "well under 60 s"),
            ("load", analyse["load_s"], None, "< 10 s"),
            *((f"  {n}", analyse[f"{n}_s"], None, "") for n in
              ("stats", "controlnet", "lora", "unique_loras", "adapter_loading")),
            ("load + whole analysis", analyse["load_plus_analysis_s"], analyse["peak_mb"], "< 60 s, < 4096 MB")]

    print(f"trace toolkit benchmark: {analyse['requests']:,} requests, {analyse['adapter_accesses']:,} adapter "
          f"accesses, {analyse['instances']} instances, {args.workers} workers")
    print(f"{'phase':34s} {'wall s':>8s} {'peak MB':>9s}  goal")
    for name, s, mb, goal in rows:
        print(f"{name:34s} {s:8.2f} {'' if mb is None else f'{mb:9.0f}':>9s}  {goal}")
    print(f"(medians of {args.repeats} analysis runs; peak after load {analyse['peak_after_load_mb']:.0f} MB, main "
          f"process {analyse['peak_main_process_mb']:.0f} MB, + largest forked worker = the peak shown)")
    print(f"baselines on {base['baseline_requests']:,} requests: fast loader {base['load_speedup']:.1f}x the exact "
          f"one; lock-step engine {base['cache_speedup_one_capacity']:.1f}x the sequential one (one capacity)")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} (2 cores; others share them)")
    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform(), "loadavg_1m_before": load_before[0],
                          "loadavg_1m_after": load_after[0]},
              "config": {"requests": args.requests, "instances": args.instances, "seed": args.seed,
                         "workers": args.workers},
              "synth": synth, "analyse": analyse, "baselines": base, "goals": goals,
              "goals_met": {"load_s": analyse["load_s"] < goals["load_s"],
                            "load_plus_analysis_s": analyse["load_plus_analysis_s"] < goals["load_plus_analysis_s"],
                            "peak_mb": max(analyse["peak_mb"], synth["peak_mb"]) < goals["peak_mb"]}}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
