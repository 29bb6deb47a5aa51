"""The coordinator control set against Ray Serve's defaults, live, on the same replicas.

End to end, with the real commands:
  1. builds the many-model demo (`t2i demo-models --bases 8 --loras 64 --replicas 4`: four
     BaseModel replicas, eight base models, a device budget of two pipelines per replica);
  2. writes a Katz-shaped synthetic trace (`t2i trace synth`) and a simulator profile of the
     running service (`t2i profile`, on a fresh ray-default service);
  3. per control set, on a freshly started service (`t2i serve --policies SET`): `t2i parity`
     replays the same slice live (open loop, Poisson arrivals) and simulates it under the
     simulator's matching set from the profile (the prediction);
  4. prints the arms' figures, their load-seconds by part and, per base model, how each arm
     spread it over the replicas and what its requests paid (the replay summary's
     `per_base_model`), and records benchmarks/results/live_coordinator.json.

Equal cost by construction: the same machine, the same four BaseModel replicas, and the same
device bytes per replica (ray-default's serve.multiplexed holds `cache.base_models_per_replica`
= 2 pipelines; the coordinator's cache gets `control.gpu_budget_bytes` = the bytes of the two
largest pipelines and two ControlNets). The coordinator also uses host memory
(`control.host_budget_bytes`) as a second tier, which Ray's multiplexer cannot; the
`coordinator-no-host` arm turns it off, to show what routing, placement and eviction do alone.
On this CPU machine a host-tier "reload" is nearly free (the weights never leave RAM); on a GPU it
is a host-to-device copy, which the profile's load model does not see here.

Goal (issue 10): the coordinator at least 40% fewer load-seconds than ray-default, lower p99,
fewer SLO violations.

Run: python benchmarks/live_coordinator.py [--requests 300] [--utilisation 0.5 | --rate 2.0]
     [--slack-fraction 0.25] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import RESULTS, machine_info, write_result  # noqa: E402
from benchmarks.live_replay import (free_port, katz_trace, start_service, stop_service, t2i,  # noqa: E402
                                    with_policies)
from trace_replay.replay.compare import compare, format_comparison, read_records  # noqa: E402

# control-section overrides per arm; "{contention}" is the host contention this run's profile
# measured (each busy neighbour's share of extra duration: four replicas share two cores), which
# the router prices; "{slack}" is --slack-fraction of the SLO. The coordinator arms route with a
# slack of that much (policies.routing slack_s: a request waits up to that long behind a replica
# holding its pipeline rather than load it on a less busy one), as the demo config does;
# coordinator-no-slack is the router without it, coordinator-lean with a budget instead (any
# replica within that much of the best, the fewest loads among them: the simulator's
# coordinator-lean).
def _coordinator(**routing) -> dict:
    return {"policies": "coordinator",
            "routing_args": {"band_pools": False, "host_contention": "{contention}", "slack_s": "{slack}",
                             "host_slots": "{cores}", **routing}}


ARMS = {"ray-default": {"policies": "ray-default"},
        "coordinator": _coordinator(),
        "coordinator-no-slack": _coordinator(slack_s=0.0),
        "coordinator-lean": _coordinator(slack_s=0.0, budget_s="{slack}"),
        "coordinator-blind": _coordinator(host_contention=0.0),  # as if replicas did not contend
        # contention priced twice: a request's own stretch and, about as much, the stretch it
        # puts on its busy neighbours (queues rather than crowds the shared cores)
        "coordinator-harm": _coordinator(host_contention="{contention_x2}"),
        "coordinator-no-host": {**_coordinator(), "host_budget_bytes": 0},
        # a request loads what it lacks only once it holds the replica (before control.load_ahead)
        "coordinator-no-ahead": {**_coordinator(), "load_ahead": False},
        # without policies.routing host_slots (the demo's default: an idle replica on a machine
        # already computing as many requests as it has cores is priced as starting when one of
        # them drains); the arm results/live_coordinator_900_seed2_u06_slots.json called
        # coordinator-slots is today's coordinator
        "coordinator-no-slots": _coordinator(host_slots=0),
        # replicas report their drain time as the simulator's do, each request at its base model's
        # running mean (control.per_model_compute on), and routers price flights with those means;
        # in results/live_coordinator_500x2_seed2_u06_drain.json this arm is `coordinator` and
        # today's coordinator (the mean compute x queue length) is `coordinator-mean-compute`
        "coordinator-per-model": {**_coordinator(), "per_model_compute": True},
        # hot pipelines pinned on as many replicas as their demand share asks, down to one (the
        # default keeps at least two, for failover)
        "coordinator-min1": {**_coordinator(), "placement_args": {"fuse_top": 0, "min_replicas": 1}},
        # a hot pipeline the hot pool has no room for is pinned on the least pinned replicas
        # outside it (policies.placement spill), not nowhere
        "coordinator-spill": {**_coordinator(), "placement_args": {"fuse_top": 0, "spill": True}},
        # replicas report (to the coordinator and, through Serve's controller, to the routers) every
        # 3 s instead of every second: idle, the 4-replica service used 0.358 cores under the
        # coordinator, 0.314 at 3 s and 0.279 under Ray, on a machine of 2 cores
        # (control_plane_cpu.py, results/control_plane_cpu.json)
        "coordinator-p3": {**_coordinator(), "report_period_s": 3.0},
        # at most as many replicas compute at once as the machine has cores (control.compute_slots):
        # a request finding them all busy waits for one instead of time-sharing the cores
        "coordinator-compute-slots": {**_coordinator(), "compute_slots": "{cores}"}}
GOAL_LOAD_S_CUT = 0.40


def arm_config(base: Path, arm: str, out: Path, slack_s: float = 0.0, contention: float = 0.0) -> Path:
    text = json.dumps(ARMS[arm]).replace('"{slack}"', str(slack_s))
    text = text.replace('"{contention_x2}"', str(2 * contention))
    text = text.replace('"{cores}"', str(os.cpu_count() or 1))  # the replicas share this machine
    overrides = json.loads(text.replace('"{contention}"', str(contention)))
    return with_policies(base, **overrides, out=out)


def cache_view(port: int, report_period_s: float = 1.0) -> dict:
    """The coordinator's GET /v1/cache (each replica's last report, prefetch counters), read after
    two report periods so the last loads are in; {} for a service without a coordinator."""
    import httpx

    time.sleep(2 * report_period_s)
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/v1/cache", timeout=10)
    except httpx.HTTPError:
        return {}
    return resp.json() if resp.status_code == 200 else {}


def idle_load_seconds(view: dict, part: str) -> float:
    """Seconds the replicas spent on ``part`` of their idle loads, from ``cache_view``: ``prefetch``
    (the bandit's) or ``placement`` (pinned models placed). These loads are on no request's path,
    so the responses' load_s never shows them."""
    return float((view.get(part) or {}).get("load_seconds") or 0.0)


def measured_contention(profile: Path) -> float:
    """cluster.host_contention of a `t2i profile` output (0 when it measured none)."""
    import yaml

    doc = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
    return float((doc.get("cluster") or {}).get("host_contention") or 0.0)


def print_by_base_model(runs: dict) -> None:
    """Per base model, from each arm's replay summary (trace_replay.replay.report.per_model): how
    the arm spread it over the replicas, and what its requests paid."""
    per = {arm: doc["live_summary"].get("per_base_model") or {} for arm, doc in runs.items()}
    arms = [arm for arm in runs if per[arm]]
    if not arms:
        return
    print("\nby base model: requests; per arm replicas used / SLO violations / pipeline-loading s / "
          "median queue s / median inference s")
    print(f"{'base model':16s} {'n':>4s} | " + " | ".join(f"{arm[:27]:27s}" for arm in arms))
    for b in sorted(per[arms[0]], key=lambda b: -per[arms[0]][b]["requests"]):
        cells = [f"{x['replicas']} / {x['violations']:3d} / {x['models_load_s']:5.2f} / "
                 f"{x['queue_p50_s']:4.2f} / {x['inference_p50_s']:4.2f}" if (x := per[arm].get(b)) else "-"
                 for arm in arms]
        print(f"{b:16s} {per[arms[0]][b]['requests']:4d} | " + " | ".join(f"{c:27s}" for c in cells))


def machine_probe_s(rounds: int = 5) -> float:
    """Median seconds of a fixed CPU job (float32 matrix products on this process's threads): taken
    before each arm, it shows whether the shared machine was slower for one arm than another."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((384, 384), dtype=np.float32)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(20):
            a @ a
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run_arm(arm: str, tag: str, args, load: list[str], work: Path, base_config: Path, trace: Path,
            profile: Path, contention: float) -> dict:
    """One arm on a freshly started service: ``t2i parity``'s document, with the prefetch loads,
    the replicas that served and the machine probe taken just before it added to its ``live``
    figures. ``load``: the
    parity arguments that set the arrival rate (``--utilisation U`` or ``--rate R``)."""
    config = arm_config(base_config, arm, work / f"config-{tag}.yaml", args.slo_s * args.slack_fraction, contention)
    probe = machine_probe_s()
    port = free_port()
    proc = start_service(config, port, work / f"serve-{tag}.log")
    try:
        out = t2i("parity", "--trace", str(trace), "--format", "katz", "--url", f"http://127.0.0.1:{port}",
                  "--config", str(config), "--profile", str(profile), "--arrival", "poisson",
                  *load,
                  "--max-requests", str(args.requests), "--slo-s", str(args.slo_s), "--seed", str(args.seed),
                  "--no-progress", "--json", "--out", str(work / f"parity-{tag}"), capture=True)
        view = cache_view(port, ARMS[arm].get("report_period_s", 1.0))
    finally:
        stop_service(proc)
    (work / f"cache-{tag}.json").write_text(json.dumps(view, indent=1))
    doc = json.loads(out.strip().splitlines()[-1])
    live = doc["live"]  # request load_s plus the prefetches' loads: all load work
    live["placement_load_seconds"] = idle_load_seconds(view, "placement")
    # "prefetch" in the results (as before placements were told apart): every idle load
    prefetch_s = idle_load_seconds(view, "prefetch") + live["placement_load_seconds"]
    live["prefetch_load_seconds"] = prefetch_s
    # a replica that never answered leaves its arm with less capacity than the others: say so
    live["replicas_serving"] = len(set(read_records(work / f"parity-{tag}").replica) - {""})
    if live["replicas_serving"] < doc["gpus"]:
        print(f"WARNING {tag}: only {live['replicas_serving']} of {doc['gpus']} BaseModel replicas answered a "
              f"request (the coordinator's last view of them: {work / f'cache-{tag}.json'})", flush=True)
    live["load_seconds_with_prefetch"] = live["load_seconds"] + prefetch_s
    live["machine_probe_s"] = probe
    return doc


def run_tag(arm: str, repeat: int, repeats: int) -> str:
    """The name of one arm's run (its config, log and parity folder): the arm, with the repeat."""
    return arm if repeats == 1 else f"{arm}-{repeat + 1}"


RATIO_KEYS = ("load_seconds", "load_seconds_with_prefetch", "latency_p50_s", "latency_p99_s", "slo_violation_rate")


def ratios_vs_ray(runs: dict) -> dict:
    """Each arm's live figures over ray-default's in the same repeat."""
    ref = runs["ray-default"]["live"]
    return {arm: {k: (doc["live"][k] / ref[k] if ref[k] else None) for k in RATIO_KEYS}
            for arm, doc in runs.items() if arm != "ray-default"}


def median_ratios(per_repeat: list[dict]) -> dict:
    """Per arm and figure, the median over repeats of the paired ratios (None where undefined)."""
    import statistics

    out: dict = {}
    for arm in per_repeat[0]:
        out[arm] = {}
        for k in RATIO_KEYS:
            vals = [r[arm][k] for r in per_repeat if r[arm][k] is not None]
            out[arm][k] = statistics.median(vals) if vals else None
    return out


def row(name: str, live: dict, sim: dict) -> str:
    return (f"{name:20s} | {live['load_seconds']:8.1f} {live.get('prefetch_load_seconds', 0.0):8.1f} "
            f"{live['latency_p50_s']:6.2f} {live['latency_p95_s']:6.2f} "
            f"{live['latency_p99_s']:6.2f} {live['slo_violation_rate']:6.1%} | {sim['load_seconds']:8.1f} "
            f"{sim['latency_p50_s']:6.2f} {sim['latency_p99_s']:6.2f} {sim['slo_violation_rate']:6.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="requests per arm")
    ap.add_argument("--rate", type=float, help="Poisson arrival rate, requests/s (default: set by "
                    "--utilisation)")
    ap.add_argument("--utilisation", type=float, default=0.5, help="unless --rate is given: this fraction "
                    "of the capacity the profile gives the four replicas for the trace's mix (`t2i parity "
                    "--utilisation`), so a slower or faster machine is loaded alike (default %(default)s)")
    ap.add_argument("--arms", default="ray-default,coordinator,coordinator-blind,coordinator-no-host",
                    help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--slo-s", type=float, default=2.0, help="latency SLO for the violation rate")
    ap.add_argument("--slack-fraction", type=float, default=0.25,
                    help="the coordinator arms' routing slack, as a fraction of the SLO")
    ap.add_argument("--models", help="a many-model demo folder already built (with its config.yaml)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bases", type=int, default=8, help="base models in the demo (8 fill the four "
                    "replicas' device budgets exactly; more than 8 do not fit the cluster at once)")
    ap.add_argument("--repeats", type=int, default=1, help="run every arm this many times, in "
                    "alternating order (A B, B A, ...: a machine that slows or speeds up during the run "
                    "favours no arm), and report each repeat's ratios and their median (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 30 requests per arm")
    ap.add_argument("--out", default=str(RESULTS / "live_coordinator.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder (models, trace, profile, "
                    "configs, service logs, per-request records) and print where it is")
    args = ap.parse_args()
    if args.rate is not None:
        args.utilisation = None  # an explicit rate wins
    elif not 0 < args.utilisation <= 10:
        ap.error(f"--utilisation must be in (0, 10] (a fraction of capacity), got {args.utilisation}")
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        ap.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if not args.slack_fraction >= 0:
        ap.error(f"--slack-fraction must be >= 0 (a fraction of the SLO), got {args.slack_fraction}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.quick:
        args.requests = 30
    work = Path(tempfile.mkdtemp(prefix="t2i-live-coordinator-"))
    t0 = time.time()
    try:
        models = Path(args.models) if args.models else work / "models"
        if not args.models:
            t2i("demo-models", "--out", str(models), "--bases", str(args.bases), "--loras", "64", "--replicas", "4",
                "--quiet")
        base_config = models / "config.yaml"
        trace = katz_trace(work / "katz.json", args.requests, args.seed + 1)
        profile = work / "profile.yaml"
        ray_config = arm_config(base_config, "ray-default", work / "config-ray-default.yaml")
        port = free_port()
        proc = start_service(ray_config, port, work / "serve-profile.log")
        try:
            t2i("profile", "--url", f"http://127.0.0.1:{port}", "--config", str(ray_config),
                "--out", str(profile), "--no-progress")
        finally:
            stop_service(proc)
        contention = measured_contention(profile)
        print(f"host contention measured by the profile: +{contention:.0%} per busy neighbour "
              "(the coordinator arms' router prices it)", flush=True)
        repeats: list[dict] = []
        sized = None  # the rate the first arm sized from the profile (--utilisation)
        load = ["--utilisation", str(args.utilisation)] if args.utilisation else ["--rate", str(args.rate)]
        for r in range(args.repeats):
            runs = {}
            for arm in (arms if r % 2 == 0 else arms[::-1]):
                tag = run_tag(arm, r, args.repeats)
                runs[arm] = run_arm(arm, tag, args, load, work, base_config, trace, profile, contention)
                if sized is None and runs[arm].get("rate_from_capacity"):
                    sized = runs[arm]["rate_from_capacity"]
                    load = ["--rate", str(sized["rate"])]  # every later arm replays at this very rate
                    print(f"{tag}: {sized['rate']:.3f} req/s = {sized['utilisation']:g} x capacity "
                          f"{sized['capacity_rps']:.3f} req/s ({sized['parallel_service']:.2f} parallel service / "
                          f"{sized['mean_compute_s']:.3f} s mean compute)", flush=True)
                print(row(tag, runs[arm]["live"], runs[arm]["sim"]), flush=True)
            repeats.append({arm: runs[arm] for arm in arms})
        rate = sized["rate"] if sized else args.rate
        util = f" (utilisation {sized['utilisation']:g} of the profile's capacity)" if sized else ""
        print(f"\n{args.requests} requests per arm at {rate:.3g} req/s{util} (Poisson), SLO {args.slo_s:g} s, "
              f"4 BaseModel replicas on 2 CPU cores, fresh service per arm, {args.repeats} repeat(s)")
        print(f"{'arm':20s} | {'live load-s':>8s} {'prefetch':>8s} {'p50':>6s} {'p95':>6s} {'p99':>6s} {'viol.':>6s} | "
              f"{'sim load-s':>8s} {'p50':>6s} {'p99':>6s} {'viol.':>6s} | probe | replicas serving")
        for r, runs in enumerate(repeats):
            for arm, doc in runs.items():
                tag = run_tag(arm, r, args.repeats)
                print(row(tag, doc["live"], doc["sim"]) + f" | {doc['live']['machine_probe_s'] * 1e3:.0f} ms | "
                      f"{doc['live']['replicas_serving']} of {doc['gpus']}")
        print("\nlive load-seconds by part (models: base pipelines, ControlNets, waits for room; fetch: "
              "LoRAs from the store; swap: LoRAs to the device; unmerge: previous LoRAs out; merge: this "
              "request's in)")
        for r, runs in enumerate(repeats):
            for arm, doc in runs.items():
                parts = doc["live_summary"].get("load_seconds_parts") or {}
                tag = run_tag(arm, r, args.repeats)
                print(f"{tag:20s} | " + "  ".join(f"{k[:-2]} {v:6.2f}" for k, v in parts.items()))
        for runs in repeats:
            print_by_base_model(runs)
        per_repeat = [ratios_vs_ray(runs) for runs in repeats] if "ray-default" in arms else []
        ratios = median_ratios(per_repeat) if per_repeat else {}
        for arm, med in ratios.items():
            each = ", ".join(f"x{r[arm]['load_seconds_with_prefetch'] or float('nan'):.2f}" for r in per_repeat)
            viol = ", ".join(f"{runs[arm]['live']['slo_violation_rate']:.1%} vs "
                             f"{runs['ray-default']['live']['slo_violation_rate']:.1%}" for runs in repeats)
            print(f"{arm} vs ray-default ({'median of ' if len(per_repeat) > 1 else ''}{len(per_repeat)}): "
                  f"load-seconds with prefetches x{med['load_seconds_with_prefetch'] or float('nan'):.2f} [{each}] "
                  f"(goal <= x{1 - GOAL_LOAD_S_CUT:.2f}), p99 x{med['latency_p99_s'] or float('nan'):.2f}, "
                  f"violations x{med['slo_violation_rate'] or float('nan'):.2f} [{viol}]")
        # the same ratios pooled over the repeats, with 95% block-bootstrap intervals from the
        # requests' own records (request load-seconds: prefetches are on no request's path)
        intervals = {}
        for arm in (a for a in arms if a != "ray-default" and "ray-default" in arms):
            pairs = [tuple(read_records(work / f"parity-{run_tag(x, r, args.repeats)}") for x in ("ray-default", arm))
                     for r in range(args.repeats)]
            intervals[arm] = compare(pairs, args.slo_s)
            print("\n" + format_comparison(intervals[arm], "ray-default", arm))

        def slim(runs: dict) -> dict:
            return {arm: {k: doc[k] for k in ("live", "sim", "relative_error", "difference", "gpus", "policy_set",
                                              "live_summary", "sim_summary")} for arm, doc in runs.items()}

        write_result(args.out, {
            "benchmark": "live_coordinator",
            "goal": f">= {GOAL_LOAD_S_CUT:.0%} fewer load-seconds than ray-default, lower p99, fewer SLO violations",
            "cost": "same 4 BaseModel replicas on the same 2-core machine; equal device bytes per replica",
            "runs": slim(repeats[0]), "ratios_vs_ray_default": per_repeat[0] if per_repeat else {},
            "repeats": [slim(runs) for runs in repeats[1:]],
            "ratios_per_repeat": per_repeat, "median_ratios_vs_ray_default": ratios,
            "paired_intervals_vs_ray_default": intervals,
            "order": "arms in the given order in odd repeats, reversed in even ones",
            "args": vars(args), "rate_from_capacity": sized,
            "host_contention": contention,
            "profile": profile.read_text() if profile.exists() else None,
            "wall_s": time.time() - t0, "machine": machine_info()})
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
