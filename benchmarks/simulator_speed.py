"""Benchmark: simulated requests per second of the cluster simulator on one core.

Goal (issue 4): at least 50k simulated requests/s on one core, at 550k requests on 100 GPUs and at
3.5M requests on 300 GPUs (Katz-shaped synthetic traces from `t2i trace synth`, seeded). The rate
is requests / wall seconds of the event loop alone (``sim_wall_s``); trace loading and the
vectorised up-front sampling (``build_s``) are reported beside it. Each case also runs at a
compressed time scale (arrivals x10 faster: queues, evictions and misses are far more frequent,
which is the expensive path), because the production rate leaves 100 GPUs mostly idle.
The goal is the baseline: rows report ``ratio_to_goal`` = rate / 50k.

``--compare-root DIR`` also times another checkout of the project (e.g. ``git archive`` of the
commit before a change) on the same trace, alternating with this one repeat by repeat, so a
before/after on this noisy shared machine is one run: rows then carry the other tree's walls and
CPU seconds, ``speedup`` = its median wall / this tree's median wall, ``speedup_cpu`` the same in
CPU seconds (fairer when other work shares the cores), and both trees' outcomes
(SLO violations, loads), so a change in decisions shows beside the change in speed.

    python benchmarks/simulator_speed.py                       # both sizes, writes JSON
    python benchmarks/simulator_speed.py --sizes 550000:100 --sets lru,coordinator
    python benchmarks/simulator_speed.py --sizes 550000:100 --sets coordinator --scales 10 \
        --repeats 2 --compare-root /tmp/before --out benchmarks/results/simulator_speed_coordinator_550k.json
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
from benchmarks._common import RESULTS, git, write_result  # noqa: E402
GOAL_RPS = 50_000.0
# Times one set in another checkout (argv: root, trace, gpus, scale, seed, set); prints its summary.
_OTHER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from trace_replay.formats import load_trace
from trace_replay.paths import gentd26_dir
from trace_replay.simulator import SimConfig, simulate
from trace_replay.simulator.config import ClusterSpec
from trace_replay.simulator.workload import build_workload
table = load_trace(sys.argv[2], "katz")
cfg = SimConfig(cluster=ClusterSpec(gpus=int(sys.argv[3])), time_scale=float(sys.argv[4]), seed=int(sys.argv[5]))
wl, _ = build_workload(table, cfg, gentd26_dir())
import time
c0 = time.process_time()
s = simulate(table, sys.argv[6], cfg, workload=wl).summary
s["cpu_s"] = time.process_time() - c0
print(json.dumps({k: s[k] for k in ("sim_wall_s", "cpu_s", "slo_violation_rate", "loads", "load_seconds")}))
"""


def run_other(root: str, trace: Path, gpus: int, scale: float, seed: int, name: str) -> dict:
    """One run of ``name`` in the checkout at ``root`` (a fresh interpreter; only its loop is timed)."""
    from trace_replay.paths import shared_data_dir

    # the same load-time samples as this tree's run (the other tree's ../shared may not exist)
    env = {**os.environ, "PYTHONPATH": root, "T2I_SHARED_DATA": str(shared_data_dir())}
    out = subprocess.run([sys.executable, "-c", _OTHER, root, str(trace), str(gpus), str(scale), str(seed), name],
                         cwd=root, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_size(n: int, gpus: int, sets: list[str], scales: list[float], repeats: int, tmp: Path,
             seed: int, compare_root: str | None = None) -> list[dict]:
    from trace_replay.formats import load_trace
    from trace_replay.paths import gentd26_dir
    from trace_replay.simulator import SimConfig, simulate
    from trace_replay.simulator.config import ClusterSpec
    from trace_replay.simulator.workload import build_workload
    from trace_replay.synth import SynthConfig, write_katz_json

    trace = tmp / f"synth_{n}.json"
    write_katz_json(SynthConfig(requests=n, instances=max(2, gpus + gpus // 15), seed=seed), trace)
    t0 = time.perf_counter()
    table = load_trace(trace, "katz")
    load_s = time.perf_counter() - t0
    rows = []
    for scale in scales:
        cfg = SimConfig(cluster=ClusterSpec(gpus=gpus), time_scale=scale, seed=seed)
        t0 = time.perf_counter()
        wl, notes = build_workload(table, cfg, gentd26_dir())
        build_s = time.perf_counter() - t0
        for name in sets:
            walls, cpus, summary, other = [], [], {}, []
            for _ in range(repeats):
                if compare_root:  # alternate with the other tree, so both see the same noise
                    other.append(run_other(compare_root, trace, gpus, scale, seed, name))
                c0 = time.process_time()
                summary = simulate(table, name, cfg, workload=wl).summary
                cpus.append(time.process_time() - c0)
                walls.append(summary["sim_wall_s"])
            wall = statistics.median(walls)
            row = {"requests": n, "gpus": gpus, "time_scale": scale, "policy_set": name,
                   "sim_wall_s": round(wall, 2), "walls_s": [round(w, 2) for w in walls],
                   # CPU seconds of the whole simulate() call (loop + summary): on a shared machine
                   # the fairer A/B figure, since waiting for a core does not count
                   "cpu_s": [round(c, 2) for c in cpus],
                   "requests_per_s": round(n / wall), "ratio_to_goal": round(n / wall / GOAL_RPS, 3),
                   "load_trace_s": round(load_s, 2), "build_s": round(build_s, 2),
                   "gpu_busy_fraction": round(summary["gpu_busy_fraction"], 4),
                   "slo_violation_rate": round(summary["slo_violation_rate"], 5),
                   "loads": summary["loads"], "load_seconds": round(summary["load_seconds"]), "notes": notes}
            if other:
                other_wall = statistics.median(o["sim_wall_s"] for o in other)
                row["compare"] = {"root": compare_root, "walls_s": [round(o["sim_wall_s"], 2) for o in other],
                                  "cpu_s": [round(o["cpu_s"], 2) for o in other],
                                  "sim_wall_s": round(other_wall, 2), "requests_per_s": round(n / other_wall),
                                  "slo_violation_rate": round(other[-1]["slo_violation_rate"], 5),
                                  "loads": other[-1]["loads"], "load_seconds": round(other[-1]["load_seconds"])}
                row["speedup"] = round(other_wall / wall, 3)
                row["speedup_cpu"] = round(statistics.median(o["cpu_s"] for o in other) / statistics.median(cpus), 3)
            rows.append(row)
            print(f"{n:>9,} req {gpus:>4} GPUs x{scale:<4g} {name:17s} {row['requests_per_s']:>8,} req/s "
                  f"(x{row['ratio_to_goal']:.2f} of goal; loop {wall:.1f} s, build {build_s:.1f} s, "
                  f"busy {row['gpu_busy_fraction']:.1%})", flush=True)
            if other:
                print(f"{'':>37}compare tree: {row['compare']['requests_per_s']:>8,} req/s; "
                      f"speedup x{row['speedup']:.2f} (wall), x{row['speedup_cpu']:.2f} (CPU)", flush=True)
    trace.unlink()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="550000:100,3500000:300", help="requests:gpus, comma-separated")
    ap.add_argument("--sets", default="ray-default,lru", help="policy sets to time")
    ap.add_argument("--scales", default="1,10", help="time scales (arrival compression)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-root", default=None, help="another checkout to time on the same traces, "
                    "alternating (before/after in one run)")
    ap.add_argument("--out", default=str(RESULTS / "simulator_speed.json"))
    args = ap.parse_args()
    sizes = [tuple(int(x) for x in s.split(":")) for s in args.sizes.split(",")]
    sets = [s.strip() for s in args.sets.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, gpus in sizes:
            rows += run_size(n, gpus, sets, scales, args.repeats, Path(tmp), args.seed, args.compare_root)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    doc = {
        "benchmark": "simulator_speed", "goal_requests_per_s": GOAL_RPS,
        "goal_met": all(r["requests_per_s"] >= GOAL_RPS for r in rows),
        "rows": rows, "machine": {"python": platform.python_version(), "platform": platform.platform(),
                                  "cpus_used": 1, "loadavg_after": load},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
        "git_commit": git("rev-parse", "--short", "HEAD"), "args": vars(args),
    }
    write_result(args.out, doc)
    print(f"goal {GOAL_RPS:,.0f} req/s met in every row: {doc['goal_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
