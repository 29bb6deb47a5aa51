"""``t2i simulate``: replay a trace through the cluster simulator under named policy sets.

``app/cli.py`` dispatches ``t2i simulate ARGS`` to ``main(ARGS)``; ``python -m
trace_replay.simulator.cli`` works too. With ``--json`` it prints one JSON object: the summary
of the run (or ``{"runs": [...]}`` for several sets, compared on the same sampled workload).
``--format diffserve`` with cascade policies (all-light, all-heavy, static, diffserve,
coordinator) runs the light -> heavy cascade simulator (`cascade.py`) on DiffServe's data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trace_replay.formats import FORMATS
from trace_replay.simulator.policy_sets import POLICY_SETS


def build_parser() -> argparse.ArgumentParser:
    sets = "\n".join(f"  {k:17s} {v.description}" for k, v in POLICY_SETS.items())
    ap = argparse.ArgumentParser(prog="t2i simulate", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Discrete-event simulation of a GPU cluster serving a trace.",
                                 epilog="policy sets:\n" + sets + "\ncascade policies (--format diffserve, "
                                 "see cascade_cli.py): all-light, all-heavy, static, diffserve, coordinator")
    ap.add_argument("--trace", required=True)
    ap.add_argument("--format", required=True, choices=sorted(FORMATS))
    ap.add_argument("--lenient", action="store_true", help="skip malformed rows (reported)")
    ap.add_argument("--service", help="keep one service/tenant only")
    ap.add_argument("--mean-qps", type=float, help="gentd26-processed: mean arrival rate (the file has "
                    "row order only; arrivals are a seeded Poisson process shaped like qps.csv)")
    ap.add_argument("--policies", default="ray-default", help="policy set name(s), comma-separated")
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--slo-s", type=float, default=60.0, help="latency SLO per request (default 60)")
    ap.add_argument("--time-scale", type=float, default=1.0, help="divide arrival times by this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu-gb", type=float, help="GPU memory for weights per worker (default 18)")
    ap.add_argument("--host-gb", type=float, help="host-memory tier per worker (default 32)")
    ap.add_argument("--data-dir", help="GenTD26 folder for load-time samples (default ../shared/data/gentd26; "
                    "'none' = exponential fallbacks)")
    ap.add_argument("--config", help="JSON or YAML SimConfig (cluster, components, inference); flags override")
    ap.add_argument("--records", help="write per-request records here (.parquet or .csv; one per set, "
                    "suffixed with the set name when several)")
    ap.add_argument("--figures", help="write figures (PNG and PDF) to this folder")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--diffserve-dir", help="cascade policies: DiffServe data folder (profiles, confidence "
                    "scores, f(t), SLO; default ../shared/data/diffserve)")
    ap.add_argument("--switch-s", type=float, help="cascade policies: seconds a GPU spends loading the other "
                    "stage's model when re-allocated (default 2.73)")
    return ap


def _config(args: argparse.Namespace):
    from trace_replay.simulator.config import SimConfig

    doc: dict = {}
    if args.config:
        text = Path(args.config).read_text(encoding="utf-8")
        if args.config.endswith((".yaml", ".yml")):
            import yaml

            doc = yaml.safe_load(text) or {}
        else:
            doc = json.loads(text)
    doc.setdefault("cluster", {})["gpus"] = args.gpus
    if args.gpu_gb is not None:
        doc["cluster"]["gpu_model_gb"] = args.gpu_gb
    if args.host_gb is not None:
        doc["cluster"]["host_gb"] = args.host_gb
    doc.update(slo_s=args.slo_s, seed=args.seed, time_scale=args.time_scale)
    return SimConfig.model_validate(doc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"t2i simulate: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from trace_replay.formats import load_trace
    from trace_replay.paths import gentd26_dir
    from trace_replay.simulator import simulate
    from trace_replay.simulator.metrics import figures, write_records
    from trace_replay.simulator.workload import build_workload

    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    from trace_replay.simulator.cascade_cli import routes_to_cascade, run_cascade

    if routes_to_cascade(args.format, names):
        return run_cascade(args, names)
    for n in names:
        if n not in POLICY_SETS:
            raise KeyError(f"unknown policy set {n!r}; sets: {', '.join(POLICY_SETS)}")
    cfg = _config(args)
    opts: dict = {}
    if args.format == "gentd26-processed":
        opts = {"seed": args.seed, "mean_qps": args.mean_qps}
        if not Path(args.trace).with_name("qps.csv").exists():
            opts["arrival"] = "poisson"
    table = load_trace(args.trace, args.format, lenient=args.lenient, **opts).for_service(args.service)
    data = None if args.data_dir == "none" else Path(args.data_dir) if args.data_dir else gentd26_dir()
    wl, notes = build_workload(table, cfg, data)
    runs = []
    for name in names:
        res = simulate(table, name, cfg, workload=wl)
        out = dict(res.summary)
        out["notes"] = notes
        if args.records:
            p = Path(args.records)
            if len(names) > 1:
                p = p.with_name(f"{p.stem}_{name}{p.suffix}")
            out["records"] = write_records(p, wl, res.records)
        if args.figures:
            out["figures"] = figures(args.figures, wl, res.records, res.summary, cfg.queue_sample_s)
        runs.append(out)
    if args.json:
        print(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, default=float))
    else:
        # active (routable) GPU-seconds beside violations: sets compare fairly only at equal cost
        keys = ("policy_set", "requests", "slo_violation_rate", "gpu_active_seconds", "latency_p50_s",
                "latency_p95_s", "latency_p99_s", "load_seconds", "gpu_busy_seconds", "gpu_busy_fraction",
                "queue_len_mean")
        print("  ".join(f"{k:>18s}" for k in keys))
        for r in runs:
            print("  ".join(f"{r[k]:>18.4g}" if isinstance(r[k], float) else f"{r[k]!s:>18s}" for k in keys))
        for r in runs:
            for f in r.get("figures", []) + ([r["records"]] if "records" in r else []):
                print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
