"""``t2i parity``: replay one slice live, simulate the same slice, print both side by side.

``app/cli.py`` dispatches ``t2i parity ARGS`` here; see ``parity.py`` for what is compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trace_replay.replay.cli import build_parser as replay_parser
from trace_replay.replay.cli import fetch_registry, live_run, map_slice, timed

EPILOG = """\
The simulated set follows the deployment's control.policies (--config), shaped like it:
ray-default (GPUs = BaseModel replicas, max_models_per_replica = cache.base_models_per_replica,
Ray's max_ongoing_requests, no autoscaling when num_replicas is fixed) or coordinator (the same
GPUs, each with the replica cache's control.gpu_budget_bytes and host_budget_bytes). Service and
load times come from --profile (write one with `t2i profile --url URL --out profile.yaml`).

After the live run the slice is simulated a second time with each request holding its replica
for the seconds it computed live (its inference_s; no host stretch, since those seconds hold it)
and its latency adding what it spent outside the replica live (hops, preprocessing, HTTP):
"sim | live service". Its error is the control plane's alone (queueing, placement, loads); what
the first prediction adds to it comes from the profile's service times (a stale profile,
contention, the machine's slow spells).

JSON: {"live": {...}, "sim": {...}, "relative_error": {...}, "difference": {...},
"sim_live_service": {...}, "live_service": {"relative_error", "difference"}, "live_summary",
"sim_summary"}: live and the sims are the compared figures, computed from each side's
per-request latencies by one function (--warmup-requests N leaves the first N out of all); the
summaries are the full `t2i replay` and `t2i simulate` ones. Relative error is (sim - live) /
live, None where live is 0 (see "difference").

example:
  t2i demo-models --out models/many --bases 8 --loras 64
  t2i serve --config models/many/config.yaml &
  t2i profile --url http://127.0.0.1:8000 --out /tmp/profile.yaml
  t2i trace synth --requests 2000 --instances 8 --base-models 40 --loras 300 --seed 1 --out /tmp/k.json
  t2i parity --trace /tmp/k.json --format katz --config models/many/config.yaml \\
      --profile /tmp/profile.yaml --arrival poisson --rate 1 --max-requests 200 --out /tmp/parity
"""


def build_parser() -> argparse.ArgumentParser:
    ap = replay_parser("t2i parity", "Replay one trace slice against the live service and through "
                       "the simulator (same requests, same policy set), and compare latency and SLO "
                       "violations.", EPILOG)
    ap.add_argument("--config", required=True, help="the t2i config the service runs (replica count, "
                    "multiplexing capacity, max_ongoing_requests)")
    ap.add_argument("--profile", required=True, help="simulator profile YAML (`t2i profile`)")
    ap.add_argument("--warmup-requests", type=int, default=0, help="leave the first N requests out "
                    "of both sides' figures (default 0: compare against a freshly started service, "
                    "whose caches are empty like the simulation's)")
    ap.add_argument("--utilisation", type=float, help="poisson/gamma, instead of --rate: arrive at this "
                    "fraction of the rate the service can complete with this slice's mix, from --profile "
                    "(replicas, replicas per host, host contention, each request's expected compute; "
                    "loads left out), so runs on slower or faster machines load the service alike; "
                    "the rate used is printed and recorded as rate_from_capacity")
    return ap


def main(argv: list[str] | None = None) -> int:
    from deployments.config import ConfigError, load_config
    from trace_replay.replay.compare import read_records
    from trace_replay.replay.parity import compare, seconds_by_request, side_by_side, sim_arrays, simulate_slice
    from trace_replay.replay.report import record_arrays, slice_stats

    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        registry = fetch_registry(args.url)
        served = set(registry.bases) | set(registry.loras) | set(registry.controlnets)
        configured = {m.id for m in config.models if m.kind in ("base", "lora", "controlnet")}
        if served != configured:
            raise ValueError(f"--config {args.config} does not describe the service at {args.url}: "
                             f"models only served: {sorted(served - configured)[:5]}, only in the "
                             f"config: {sorted(configured - served)[:5]}")
        slo = args.slo_s or registry.slo_s or 30.0
        requests, mapping, registry = map_slice(args, registry)
        sized = None
        if args.utilisation is not None:  # the slice's mix sizes the rate; arrivals come after
            sized = rate_from_capacity(args, requests, registry, config, slo)
        requests = timed(requests, args)
        sim_result, cfg, spec = simulate_slice(requests, registry, config, args.profile, slo, args.seed)
    except (ValueError, FileNotFoundError, KeyError, ConnectionError, ConfigError) as exc:
        print(f"t2i parity: error: {exc}", file=sys.stderr)
        return 2
    args.slo_s = slo
    live_summary, result = live_run(args, registry, requests, mapping)
    skip = max(0, args.warmup_requests)
    live = slice_stats(*record_arrays(result.records), slo, skip)
    sim = slice_stats(*sim_arrays(sim_result), slo, skip)
    cmp = compare(live, sim)
    # live_run wrote the records (records.csv, the live side per request); one reader for them
    compute_s, outside_s = seconds_by_request(read_records(args.out), len(requests))
    given, _, _ = simulate_slice(requests, registry, config, args.profile, slo, args.seed, service_s=compute_s)
    sim_given = slice_stats(*sim_arrays(given, outside_s), slo, skip)
    cmp_given = compare(live, sim_given)
    doc = {"live": live, "sim": sim, **cmp, "sim_live_service": sim_given, "live_service": cmp_given,
           "warmup_requests": skip,
           "live_summary": live_summary,
           "sim_summary": dict(sim_result.summary),
           "policy_set": spec.model_dump(), "profile": str(args.profile), "gpus": cfg.cluster.gpus,
           "rate_from_capacity": sized,
           # what chose and timed the slice, so it can be simulated again (benchmarks/live_resimulate.py)
           "slice": {k: getattr(args, k, None) for k in SLICE_ARGS}}
    (Path(args.out) / "parity.json").write_text(json.dumps(doc, indent=1, default=float))
    if args.json:
        print(json.dumps(doc, default=float))
    else:
        if sized is not None:
            print(f"rate {sized['rate']:.3g} req/s = utilisation {sized['utilisation']:g} x capacity "
                  f"{sized['capacity_rps']:.3g} req/s ({sized['parallel_service']:.2f} parallel service / "
                  f"{sized['mean_compute_s']:.3f} s mean compute)")
        print(f"parity: {live['requests']} requests compared ({skip} warm-up left out), live {args.url} vs simulated {spec.name} on "
              f"{cfg.cluster.gpus} GPUs ({args.profile})")
        print(side_by_side(live, [("sim", sim, cmp), ("sim | live service", sim_given, cmp_given)]))
        print(f"wrote {Path(args.out) / 'parity.json'} and records.csv (the live side, per request)")
    return 1 if result.aborted else 0


SLICE_ARGS = ("trace", "format", "max_requests", "skip", "lenient", "service", "exclude", "steps", "seed",
              "arrival", "rate", "cv", "speedup")


def resimulate(doc: dict, config, profile: str | Path, trace: str | Path | None = None,
               live=None):
    """Simulate again the slice a ``parity.json`` document (``doc``) replayed, under ``profile``:
    the same requests and arrival times (its recorded ``slice``), the deployment ``config`` it ran,
    and its SLO; ``trace``: where the trace file is now, if it moved; ``live``: the replay's records
    (``compare.read_records``), to give each request the seconds it computed live (``simulate_slice``'s
    ``service_s``). Returns ``simulate_slice``'s (result, SimConfig, policy set), and with ``live``
    its outside seconds per request (for ``sim_arrays``), else None."""
    from trace_replay.replay.mapping import Registry
    from trace_replay.replay.parity import seconds_by_request, simulate_slice

    if "slice" not in doc:
        raise ValueError("this parity.json records no 'slice' (written before t2i parity kept one): "
                         "nothing says which seed timed its arrivals")
    args = argparse.Namespace(**{**doc["slice"], **({"trace": str(trace)} if trace else {})})
    # the registry the service answered (GET /v1/models is the config's models_document)
    requests, _, registry = map_slice(args, Registry.from_models_response(config.models_document()))
    compute, outside = seconds_by_request(live, len(requests)) if live is not None else (None, None)
    return (*simulate_slice(timed(requests, args), registry, config, profile, float(doc["live_summary"]["slo_s"]),
                            args.seed, compute), outside)


def rate_from_capacity(args: argparse.Namespace, requests, registry, config, slo: float) -> dict:
    """Set ``args.rate`` to ``args.utilisation`` x the deployment's capacity for the mapped slice
    ``requests`` (``parity.capacity_rps``, which reads their mix, not their times) and return the
    sizing."""
    from trace_replay.replay.parity import capacity_rps

    if args.arrival not in ("poisson", "gamma"):
        raise ValueError(f"--utilisation sets a mean arrival rate: it needs --arrival poisson or gamma, "
                         f"not {args.arrival}")
    if args.rate is not None:
        raise ValueError("give --rate or --utilisation, not both")
    if not 0 < args.utilisation <= 10:
        raise ValueError(f"--utilisation must be in (0, 10] (a fraction of capacity), got {args.utilisation}")
    sized = capacity_rps(requests, registry, config, args.profile, slo, args.seed)
    args.rate = args.utilisation * sized["capacity_rps"]
    return {**sized, "utilisation": args.utilisation, "rate": args.rate}


if __name__ == "__main__":
    sys.exit(main())
