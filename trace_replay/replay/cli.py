"""``t2i replay``: replay a production trace against the live service and measure SLO violations.

``app/cli.py`` dispatches ``t2i replay ARGS`` here. The trace's ids are mapped onto the service's
registry (``GET /v1/models``) by popularity rank (see ``mapping.py``), requests are sent open
loop at their arrival times (scaled by ``--speedup``, or redrawn by ``--arrival``), and the run
writes per-request records, a summary and figures to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from trace_replay.formats import FORMATS

EPILOG = """\
arrivals:
  trace    the trace's own timestamps divided by --speedup (default)
  poisson  the trace's requests in order, Poisson arrivals at --rate req/s
  gamma    gamma inter-arrival gaps at --rate req/s with coefficient of variation --cv
           (cv 1 = Poisson, > 1 bursty): the load-sweep option

outputs in --out: records.csv (one row per request: send time, outcome, latency, server stage
timings, model and replica that answered), summary.json, mapping.json (trace id -> registry id,
what was trimmed), replay.png (latency CDF, throughput and violations over time, stages per base
model). A violation is latency over the SLO, an error or a timeout.

example:
  t2i trace synth --requests 2000 --instances 8 --base-models 40 --loras 300 --seed 1 --out /tmp/k.json
  t2i replay --trace /tmp/k.json --format katz --arrival poisson --rate 2 --max-requests 200 \\
      --url http://127.0.0.1:8000 --out /tmp/replay
"""


def build_parser(prog: str = "t2i replay", description: str = "Replay a trace open loop against a "
                 "running t2i service and report SLO violations, goodput and the latency breakdown.",
                 epilog: str = EPILOG) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description=description, epilog=epilog)
    ap.add_argument("--trace", required=True, help="trace file")
    ap.add_argument("--format", required=True, choices=sorted(FORMATS), help="trace format (`t2i trace --help`)")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL (default: %(default)s)")
    ap.add_argument("--out", required=True, help="folder for records, summary and figures")
    ap.add_argument("--lenient", action="store_true", help="skip malformed trace rows (counted)")
    ap.add_argument("--service", help="keep one service/tenant of the trace only")
    ap.add_argument("--skip", type=int, default=0, help="start at this request of the trace (default 0)")
    ap.add_argument("--max-requests", type=int, default=200, help="replay at most N requests (default %(default)s)")
    ap.add_argument("--duration-s", type=float, help="send nothing due after S seconds of replay")
    ap.add_argument("--speedup", type=float, default=1.0, help="--arrival trace: divide the trace's "
                    "inter-arrival times by X (default 1)")
    ap.add_argument("--arrival", choices=["trace", "poisson", "gamma"], default="trace")
    ap.add_argument("--rate", type=float, help="poisson/gamma: mean arrival rate, requests/s")
    ap.add_argument("--cv", type=float, default=2.0, help="gamma: coefficient of variation of the gaps (default 2)")
    ap.add_argument("--slo-s", type=float, help="latency SLO (default: the service's slo.latency_s)")
    ap.add_argument("--timeout-s", type=float, help="per-request timeout (default: max(60, 10 x SLO))")
    ap.add_argument("--concurrency-limit", type=int, help="cap on requests in flight (default: none, "
                    "pure open loop)")
    ap.add_argument("--max-failures", type=int, default=20, help="stop after this many failures in a "
                    "row (default %(default)s)")
    ap.add_argument("--exclude", default="", help="registry ids the mapping must not use, "
                    "comma-separated (e.g. models kept for other tenants)")
    ap.add_argument("--steps", choices=["model-default", "trace"], default="model-default",
                    help="denoising steps: each base model's default (default), or the trace's")
    ap.add_argument("--seed", type=int, default=0, help="seeds arrivals and image seeds (default 0)")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def fetch_registry(url: str):
    import httpx

    from trace_replay.replay.mapping import Registry

    try:
        resp = httpx.get(url.rstrip("/") + "/v1/models", timeout=10)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"cannot reach the service at {url}: {type(exc).__name__}: {exc}. "
                              "Is it running (`make serve` or `t2i serve --config ...`)?") from None
    if resp.status_code != 200:
        raise ConnectionError(f"{url}/v1/models answered HTTP {resp.status_code}: {resp.text[:200]}")
    return Registry.from_models_response(resp.json())


def arrivals(n: int, args: argparse.Namespace, trace_times: np.ndarray) -> np.ndarray:
    from trace_replay.arrivals import gamma_renewal

    if args.arrival == "trace":
        if args.speedup <= 0:
            raise ValueError(f"--speedup must be positive, got {args.speedup}")
        return trace_times / args.speedup
    if args.rate is None or args.rate <= 0:
        raise ValueError(f"--arrival {args.arrival} needs a positive --rate (requests/s)")
    cv = 1.0 if args.arrival == "poisson" else args.cv
    return gamma_renewal(n, args.rate, cv, np.random.default_rng(args.seed))


def prepare(args: argparse.Namespace, registry):
    """Load, slice, map and time the trace: (requests, mapping report, the registry mapped onto
    after --exclude)."""
    requests, report, registry = map_slice(args, registry)
    return timed(requests, args), report, registry


def map_slice(args: argparse.Namespace, registry):
    """Load, slice and map the trace, arrivals still the trace's own: (requests, mapping report,
    the registry mapped onto after --exclude)."""
    from trace_replay.formats import load_trace
    from trace_replay.replay.mapping import map_requests

    if args.max_requests < 1 or args.skip < 0:
        raise ValueError("--max-requests must be >= 1 and --skip >= 0")
    opts: dict = {}
    if args.format == "gentd26-processed":
        opts = {"seed": args.seed}
        if not Path(args.trace).with_name("qps.csv").exists():
            opts["arrival"] = "poisson"
    table = load_trace(args.trace, args.format, lenient=args.lenient, **opts).for_service(args.service)
    table = table.sorted_by_time()
    rows = np.arange(args.skip, min(len(table), args.skip + args.max_requests))
    if rows.size == 0:
        raise ValueError(f"the trace has {len(table)} requests; nothing left after --skip {args.skip}")
    table = table.take(rows)
    excluded = {x.strip() for x in args.exclude.split(",") if x.strip()}
    if excluded:
        registry = registry.without(excluded)
    requests, report = map_requests(table, registry, steps=args.steps, seed=args.seed)
    return requests, report, registry


def timed(requests: list, args: argparse.Namespace) -> list:
    """``requests`` with the arrival times --arrival gives them."""
    times = arrivals(len(requests), args, np.array([r.time_s for r in requests]))
    return [replace(r, time_s=float(t)) for r, t in zip(requests, times)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        registry = fetch_registry(args.url)
        requests, mapping, registry = prepare(args, registry)
    except (ValueError, FileNotFoundError, KeyError, ConnectionError) as exc:
        print(f"t2i replay: error: {exc}", file=sys.stderr)
        return 2
    return run(args, registry, requests, mapping)


def live_run(args: argparse.Namespace, registry, requests, mapping) -> tuple[dict, object]:
    """Replay ``requests`` and write records, mapping, summary and figures to ``args.out``."""
    from trace_replay.progress import progress
    from trace_replay.replay.driver import replay
    from trace_replay.replay.mapping import conditioning_image_b64
    from trace_replay.replay.report import figures, per_model, summarize, write_records

    slo = args.slo_s or registry.slo_s or 30.0
    timeout = args.timeout_s or max(60.0, 10 * slo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = progress(total=len(requests), desc="replay", disable=args.no_progress or not sys.stderr.isatty())
    counts = {"failed": 0}

    def on_done(rec) -> None:
        if rec.outcome in ("failed", "timeout"):
            counts["failed"] += 1
            bar.set_postfix(failed=counts["failed"], refresh=False)
        bar.update(1)

    result = asyncio.run(replay(requests, args.url, control_image_b64=conditioning_image_b64(),
                                duration_s=args.duration_s, timeout_s=timeout,
                                concurrency_limit=args.concurrency_limit,
                                max_failures=args.max_failures, on_done=on_done))
    bar.close()
    summary = summarize(result, slo)
    summary["mapping"] = mapping.summary()
    summary["url"] = args.url
    summary["arrival"] = {"kind": args.arrival, "speedup": args.speedup, "rate": args.rate,
                          "cv": args.cv if args.arrival == "gamma" else None}
    models = per_model(result, slo)
    summary["per_base_model"] = models
    write_records(out / "records.csv", result.records)
    (out / "mapping.json").write_text(json.dumps({
        "summary": mapping.summary(), "base_models": mapping.base_map, "loras": mapping.lora_map,
        "controlnets": mapping.controlnet_map}, indent=1))
    summary["figures"] = figures(out, result, summary, models)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary, result


def run(args: argparse.Namespace, registry, requests, mapping) -> int:
    from trace_replay.replay.report import table

    summary, result = live_run(args, registry, requests, mapping)
    out = Path(args.out)
    if args.json:
        print(json.dumps(summary, default=float))
    else:
        print(table(summary))
        print(f"wrote {out / 'records.csv'}, {out / 'summary.json'}, {out / 'mapping.json'}, "
              + ", ".join(summary["figures"]))
    if result.aborted:
        print(f"t2i replay: stopped early: {result.stop_reason} (records so far are in {out})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
