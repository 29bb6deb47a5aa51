"""``t2i trace ...``: load production traces, synthesise workloads, run the analyses.

``app/cli.py`` dispatches ``t2i trace ARGS`` to ``main(ARGS)``; ``python -m trace_replay.cli``
works too. Every analysis prints a table and writes PNG and PDF figures to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from policies.defaults import DEFAULT_ADAPTER_PREFETCH, DEFAULT_EVICTION
from trace_replay.formats import FORMATS

EPILOG = "formats:\n" + "\n".join(f"  {k:18s} {v}" for k, v in FORMATS.items()) + """

rules of `cache` and `adapter-loading`: requests in timestamp order (file order breaks ties);
a request's adapters are accessed in order, ControlNets as listed then LoRAs as listed; null
entries are not adapters; one cache of K adapter slots per instance (Katz: the (scene_id, ip)
pair; a trace without instances is one instance); a miss is a load; prefetches are loads too.

shared data: ../shared/data beside the repository, or $T2I_SHARED_DATA.
"""


def _trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, help="trace file")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="trace format (see `t2i trace --help`)")
    p.add_argument("--lenient", action="store_true", help="skip malformed rows (counted and reported) instead of failing")
    p.add_argument("--service", help="keep one service/tenant only (e.g. A)")
    g = p.add_argument_group("gentd26-processed arrivals (the file has row order only)")
    g.add_argument("--arrival", default="qps", choices=["qps", "poisson"],
                   help="qps: Poisson process shaped like qps.csv (default); poisson: homogeneous")
    g.add_argument("--qps-file", help="qps.csv to take the shape from (default: beside the trace)")
    g.add_argument("--mean-qps", type=float, help="mean arrival rate; stretches the qps shape to n/rate seconds")
    g.add_argument("--seed", type=int, default=0, help="seed of the arrival process")


def _out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="figures", help="where PNG and PDF figures go (default: figures)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")


def _capacities(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"capacities must be >= 1, got {text!r}")
    return sorted(set(out))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="t2i trace", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Production text-to-image traces: load, synthesise, analyse.",
                                 epilog=EPILOG)
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic trace in the Katz JSON schema",
                       description="Seeded synthetic workload shaped like production: base-model popularity "
                                   "with a target Gini and top-5% share, diurnal rate with bursts, "
                                   "ControlNet/LoRA mixes, services A/B, requests over instances.")
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--instances", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .json (Katz schema: load with --format katz)")
    p.add_argument("--days", type=float, default=20.0, help="trace length in days (default 20, as Katz)")
    p.add_argument("--base-models", type=int, default=500)
    p.add_argument("--gini", type=float, default=0.876, help="base-model popularity Gini (production 0.876)")
    p.add_argument("--top-share", type=float, default=0.78, help="share of requests to the top 5%% of base models")
    p.add_argument("--loras", type=int, default=4000)
    p.add_argument("--controlnets", type=int, default=64)

    p = sub.add_parser("load", help="load a trace and print what is in it (and skipped rows)")
    _trace_args(p)
    p.add_argument("--json", action="store_true")

    for name, text in (("stats", "statistics per service: rate, base-model skew, adapter use"),
                       ("controlnet", "ControlNet invocation: popularity CDF, count per request, over time"),
                       ("lora", "LoRA invocation: popularity CDF, count per request, over time"),
                       ("unique-loras", "distinct LoRAs per instance over time")):
        p = sub.add_parser(name, help=text, description=text)
        _trace_args(p)
        _out_args(p)

    p = sub.add_parser("cache", help="one eviction policy at one capacity: a JSON object of requests, "
                                     "accesses, misses, loads", description="Simulate the adapter cache "
                       "of every instance under one eviction (and prefetch) policy from the registry.")
    _trace_args(p)
    p.add_argument("--policy", default=DEFAULT_EVICTION,
                   help=f"eviction policy name (see `t2i trace policies`; classic baselines: lru, lfu, gdsf, arc, "
                        f"s3-fifo, sieve; offline bound: belady) or pkg.mod:attr (default {DEFAULT_EVICTION}, "
                        f"the live service's)")
    p.add_argument("--prefetch", default=DEFAULT_ADAPTER_PREFETCH,
                   help=f"prefetch policy name (default {DEFAULT_ADAPTER_PREFETCH}, the live service's)")
    p.add_argument("--capacity", type=int, required=True, help="adapter slots per instance")
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")

    p = sub.add_parser("adapter-loading", help="loads per instance for LRU, LFU and Belady MIN, capacities 1..16",
                       description="Adapter loading per instance under several eviction policies and capacities, "
                                   "with Belady's offline optimum (MIN) as the lower bound.")
    _trace_args(p)
    _out_args(p)
    p.add_argument("--policies", default="lru,lfu,belady", help="comma-separated registry names")
    p.add_argument("--capacities", type=_capacities, default=list(range(1, 17)), help="e.g. 1-16 or 1,2,4,8")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")

    p = sub.add_parser("gentd26", help="GenTD26 analyses: skew (needs a trace), load-times, qps",
                       description="skew: Gini and top-k shares of base models, LoRAs and pipelines of a loaded "
                                   "trace; load-times: component load/inference time CDFs; qps: cluster QPS.")
    p.add_argument("analysis", choices=["skew", "load-times", "qps"])
    p.add_argument("--data-dir", help="GenTD26 folder (default ../shared/data/gentd26)")
    p.add_argument("--trace", help="trace for skew (default: data_trace_processed.csv in --data-dir)")
    p.add_argument("--format", default="gentd26-processed", choices=sorted(FORMATS))
    p.add_argument("--lenient", action="store_true")
    _out_args(p)

    p = sub.add_parser("diffserve", help="DiffServe files at a glance: arrival rates, f(t), runtimes, SLOs",
                       description="Rates of every DiffServe arrival trace, the apps' cascades and SLOs, the "
                                   "deferral curve f(t) and runtime profiles by batch size.")
    p.add_argument("--data-dir", help="DiffServe folder (default ../shared/data/diffserve)")
    _out_args(p)

    sub.add_parser("policies", help="list the eviction and prefetch policies in the registries")
    return ap


def _load(args: argparse.Namespace):
    from trace_replay.formats import load_trace

    opts = {}
    if args.format == "gentd26-processed":
        opts = {"arrival": args.arrival, "qps_path": args.qps_file, "seed": args.seed, "mean_qps": args.mean_qps}
        if args.arrival == "qps" and not args.qps_file and not Path(args.trace).with_name("qps.csv").exists():
            raise SystemExit(f"error: no qps.csv beside {args.trace}: pass --qps-file or --arrival poisson")
    table = load_trace(args.trace, args.format, lenient=args.lenient, **opts)
    if table.skipped.count:
        print(f"skipped {table.skipped.count} malformed row(s) (--lenient), e.g.:", file=sys.stderr)
        for ex in table.skipped.examples:
            print(f"  {ex}", file=sys.stderr)
    return table.for_service(getattr(args, "service", None))


def _emit(rows: list[dict], paths: list[str], as_json: bool, title: str) -> None:
    from trace_replay.report import format_table

    if as_json:
        print(json.dumps({"rows": rows, "figures": paths}, indent=1))
        return
    print(format_table(rows, title), end="")
    for p in paths:
        print(f"wrote {p}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show = not args.no_progress and sys.stderr.isatty()
    cmd = args.command
    try:
        return _run(cmd, args, show)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"t2i trace {cmd}: error: {exc}", file=sys.stderr)
        return 2


def _run(cmd: str, args: argparse.Namespace, show: bool) -> int:
    if cmd == "synth":
        from trace_replay.synth import SynthConfig, write_katz_json

        cfg = SynthConfig(requests=args.requests, instances=args.instances, seed=args.seed, days=args.days,
                          base_models=args.base_models, gini=args.gini, top_share=args.top_share,
                          loras=args.loras, controlnets=args.controlnets)
        t0 = time.perf_counter()
        write_katz_json(cfg, args.out, show_progress=show)
        print(f"wrote {args.requests:,} requests over {args.instances} instances to {args.out} "
              f"in {time.perf_counter() - t0:.1f} s")
        return 0
    if cmd == "policies":
        from policies.eviction import EVICTION
        from policies.prefetch import PREFETCH

        print("eviction:", ", ".join(EVICTION.names()))
        print("prefetch:", ", ".join(PREFETCH.names()))
        return 0
    if cmd == "gentd26":
        return _gentd26(args)
    if cmd == "diffserve":
        from trace_replay.analysis.diffserve import overview
        from trace_replay.paths import diffserve_dir

        data = Path(args.data_dir) if args.data_dir else diffserve_dir()
        rows, paths = overview(data, args.out_dir)
        _emit(rows, paths, args.json, f"diffserve: {data}")
        return 0
    table = _load(args)
    if cmd == "load":
        info = {**table.summary(), "format": table.format, "source": table.source, "notes": table.notes,
                "skipped_examples": table.skipped.examples}
        print(json.dumps(info, indent=1) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
        return 0
    if cmd in ("cache", "adapter-loading") and table.n_adapters == 0:
        print(f"warning: {table.source} has no adapter ids ({table.format}); every count will be zero",
              file=sys.stderr)
    if cmd == "cache":
        from trace_replay.cache_sim import run_cache

        res = run_cache(table, args.policy, [args.capacity], args.prefetch, seed=args.seed, show_progress=show)
        out = res.summary(args.capacity)
        if args.json:
            print(json.dumps(out))
        else:
            _emit([out], [], False, "adapter cache")
        return 0
    from trace_replay.analysis import loading, workload
    from trace_replay.table import CONTROLNET, LORA

    if cmd == "stats":
        rows, paths = workload.service_stats(table, args.out_dir)
    elif cmd in ("controlnet", "lora"):
        rows, paths = workload.invocation(table, CONTROLNET if cmd == "controlnet" else LORA, args.out_dir)
    elif cmd == "unique-loras":
        rows, paths = workload.unique_loras(table, args.out_dir)
    else:  # adapter-loading
        rows, paths, _ = loading.adapter_loading(table, [p.strip() for p in args.policies.split(",")],
                                                 args.capacities, args.workers, args.out_dir, show)
    _emit(rows, paths, args.json, f"{cmd}: {table.source}")
    return 0


def _gentd26(args: argparse.Namespace) -> int:
    from trace_replay.analysis import gentd26
    from trace_replay.formats import load_trace
    from trace_replay.paths import gentd26_dir

    data = Path(args.data_dir) if args.data_dir else gentd26_dir()
    if args.analysis == "skew":
        trace = args.trace or str(data / "data_trace_processed.csv")
        opts = {"qps_path": data / "qps.csv"} if args.format == "gentd26-processed" else {}
        if args.format == "gentd26-processed" and not (data / "qps.csv").exists():
            opts = {"arrival": "poisson"}
        rows, paths = gentd26.skew(load_trace(trace, args.format, args.lenient, **opts), args.out_dir)
    elif args.analysis == "load-times":
        rows, paths = gentd26.load_times(data, args.out_dir)
    else:
        rows, paths = gentd26.qps(data, args.out_dir)
    _emit(rows, paths, args.json, f"gentd26 {args.analysis}: {data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
