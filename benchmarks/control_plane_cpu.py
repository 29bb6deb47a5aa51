"""Processor time the serving stack burns while no request is in flight, per control set: what the
coordinator's reports and routers cost a machine whose cores the replicas share.

Why: on the 2-core demo machine four BaseModel replicas share the cores, so any processor time
the control plane takes is taken from image compute. `live_coordinator.py`'s arms run the same
requests; under the coordinator they computed about 9% longer than under Ray's defaults, even at
the 10th percentile (a request running nearly alone). This measures the idle part of that.

Per arm (`live_coordinator.py`'s ARMS: ray-default, coordinator, coordinator-p3 with reports every
3 s, ...), on a freshly started service of the many-model demo: 16 warm-up requests over four
base models (so every deployment has served and the coordinator has a view), a 15 s settle, then
the processor seconds of the whole process tree (t2i serve, Ray's daemons, every actor) over
``--seconds``, as cores (seconds per second), grouped by process title. Arms run in A B C / C B A
order over ``--repeats``; the table gives the median and each arm's ratio to ray-default's.

    python benchmarks/control_plane_cpu.py --models /tmp/many --arms ray-default,coordinator,coordinator-p3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import RESULTS, machine_info, write_result  # noqa: E402
from benchmarks.live_coordinator import ARMS, arm_config  # noqa: E402
from benchmarks.live_replay import free_port, start_service, stop_service, t2i  # noqa: E402

WARM_MODELS = ("tiny-sd-light", "tiny-sd-heavy", "tiny-sd-b00", "tiny-sd-b01")
GROUPS = ("BaseModel", "Ingress", "ControlNet", "LoRAStore", "CacheCoordinator", "ServeController",
          "ProxyActor", "raylet", "gcs_server", "serve --config")  # the last: the t2i serve driver


def group_of(cmdline: list[str]) -> str:
    """The GROUPS entry a process belongs to by its title or command line, else 'other'."""
    text = " ".join(cmdline)  # an actor's title, e.g. "ray::ServeReplica:t2i:BaseModel"
    return next((g for g in GROUPS if g in text), "other")


def tree_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """{pid: (group, user + system seconds)} for ``pid`` and every descendant alive now."""
    import psutil

    root = psutil.Process(pid)
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = (group_of(p.cmdline()), t.user + t.system)
        except psutil.Error:  # it ended between the listing and the read
            pass
    return out


def idle_cores(pid: int, seconds: float) -> dict[str, float]:
    """Cores used by each group of ``pid``'s tree over ``seconds`` (processes alive at both ends)."""
    before = tree_cpu_s(pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    after = tree_cpu_s(pid)
    wall = time.monotonic() - t0
    cores: dict[str, float] = {}
    for p, (group, cpu) in after.items():
        if p in before:
            cores[group] = cores.get(group, 0.0) + (cpu - before[p][1]) / wall
    return cores


def warm_up(port: int) -> None:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        for i in range(16):
            r = http.post("/v1/images/generations", json={"model": WARM_MODELS[i % len(WARM_MODELS)],
                                                          "prompt": "a lighthouse", "size": "64x64"})
            if r.status_code != 200:
                raise SystemExit(f"warm-up request {i} failed: {r.status_code} {r.text[:200]}")


def measure(arm: str, base_config: Path, work: Path, tag: str, seconds: float, settle_s: float) -> dict[str, float]:
    config = arm_config(base_config, arm, work / f"config-{tag}.yaml")
    port = free_port()
    proc = start_service(config, port, work / f"serve-{tag}.log")
    try:
        warm_up(port)
        time.sleep(settle_s)
        return idle_cores(proc.pid, seconds)
    finally:
        stop_service(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="a many-model demo folder with its config.yaml (default: build one, "
                    "8 base models for 4 replicas, as live_coordinator.py does)")
    ap.add_argument("--arms", default="ray-default,coordinator,coordinator-p3",
                    help=f"comma-separated, of {', '.join(ARMS)} (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=60.0, help="idle window measured (default: %(default)s)")
    ap.add_argument("--settle-s", type=float, default=15.0, help="wait after the warm-up (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds, alternating the arm order (default: %(default)s)")
    ap.add_argument("--out", default=str(RESULTS / "control_plane_cpu.json"))
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        ap.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if "ray-default" not in arms:
        ap.error("--arms must include ray-default (the baseline of the ratios)")
    if args.seconds <= 0 or args.repeats < 1:
        ap.error("--seconds must be > 0 and --repeats >= 1")
    work = Path(tempfile.mkdtemp(prefix="t2i-control-cpu-"))
    models = Path(args.models) if args.models else work / "models"
    if not args.models:
        t2i("demo-models", "--out", str(models), "--bases", "8", "--loras", "64", "--replicas", "4", "--quiet")
    runs: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    for r in range(args.repeats):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            cores = measure(arm, models / "config.yaml", work, f"{arm}-{r + 1}", args.seconds, args.settle_s)
            runs[arm].append(cores)
            print(f"{arm} repeat {r + 1}: {sum(cores.values()):.3f} cores idle", flush=True)
    total = {a: statistics.median(sum(c.values()) for c in runs[a]) for a in arms}
    groups = sorted({g for a in arms for c in runs[a] for g in c})
    print(f"\nidle processor use, cores (median of {args.repeats}; this machine has {machine_info().get('cpus')} CPUs)")
    print(f"{'arm':18s} {'total':>7s} {'x Ray':>6s}  " + " ".join(f"{g[:10]:>10s}" for g in groups))
    for a in arms:
        by = {g: statistics.median(c.get(g, 0.0) for c in runs[a]) for g in groups}
        print(f"{a:18s} {total[a]:7.3f} {total[a] / total['ray-default']:6.2f}  "
              + " ".join(f"{by[g]:10.3f}" for g in groups))
    write_result(args.out, {"benchmark": "control_plane_cpu", "arms": arms, "seconds": args.seconds,
                            "repeats": args.repeats, "runs": runs, "median_cores": total,
                            "ratio_vs_ray_default": {a: total[a] / total["ray-default"] for a in arms},
                            "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
