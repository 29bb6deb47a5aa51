"""`t2i simulate --format diffserve --policies all-light,...,coordinator`: the cascade simulator.

`cli.py` hands over here when a policy name is a cascade policy. Profiles, confidence scores,
f(t) and the SLO come from `--diffserve-dir` (default `../shared/data/diffserve`); the trace is
a DiffServe arrival file; thresholds on DiffServe's controller grid (201). Output: the JSON of
other simulations (`policy_set`, `requests`, `slo_violation_rate`, latency percentiles, ...)
plus `heavy_share` and `fid_estimate`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trace_replay.simulator.cascade_control import POLICIES as CASCADE_POLICIES

# options of the cluster simulator that mean nothing to the cascade one: refused, not ignored
_UNSUPPORTED = {"service": "--service", "mean_qps": "--mean-qps", "config": "--config", "records": "--records",
                "figures": "--figures", "gpu_gb": "--gpu-gb", "host_gb": "--host-gb", "data_dir": "--data-dir"}


def routes_to_cascade(fmt: str, names: list[str]) -> bool:
    """Whether `t2i simulate` runs the cascade simulator: with --format diffserve, names that are
    all cascade policies ("coordinator" is also a cluster policy set: under any other format it
    keeps that meaning); any other use of a cascade-only name is an error naming the fix."""
    cascade_only = [n for n in names if n in CASCADE_POLICIES and n not in _cluster_sets()]
    if fmt != "diffserve":
        if cascade_only:
            raise ValueError(f"cascade policies ({', '.join(cascade_only)}) need --format diffserve "
                             f"(a DiffServe arrival trace); got --format {fmt}")
        return False
    if all(n in CASCADE_POLICIES for n in names):
        return True
    if cascade_only:
        other = [n for n in names if n not in CASCADE_POLICIES]
        raise ValueError(f"cascade policies ({', '.join(cascade_only)}) cannot run beside cluster policy sets "
                         f"({', '.join(other)}); run them separately")
    return False


def _cluster_sets() -> set[str]:
    from trace_replay.simulator.policy_sets import POLICY_SETS

    return set(POLICY_SETS)


def _check(args: argparse.Namespace, names: list[str]) -> None:
    if args.gpus < 1:
        raise ValueError(f"--gpus must be >= 1; got {args.gpus}")
    if args.time_scale <= 0:
        raise ValueError(f"--time-scale must be > 0; got {args.time_scale}")
    if args.switch_s is not None and args.switch_s < 0:
        raise ValueError(f"--switch-s must be >= 0; got {args.switch_s}")
    given = [flag for attr, flag in _UNSUPPORTED.items() if getattr(args, attr, None) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} not supported with cascade policies")
    if not Path(args.trace).is_file():
        raise FileNotFoundError(f"--trace: no such file: {args.trace}")


def run_cascade(args: argparse.Namespace, names: list[str]) -> int:
    from trace_replay.formats import load_trace
    from trace_replay.paths import diffserve_dir
    from trace_replay.simulator.cascade import SWITCH_S, simulate_cascade
    from trace_replay.simulator.cascade_control import make_controller
    from trace_replay.simulator.cascade_inputs import CONTROLLER_GRID, load_diffserve_cascade

    _check(args, names)
    data = Path(args.diffserve_dir) if args.diffserve_dir else diffserve_dir()
    cascade = load_diffserve_cascade(data, grid=CONTROLLER_GRID)
    table = load_trace(args.trace, "diffserve", lenient=args.lenient)
    if len(table) == 0:
        raise ValueError(f"--trace {args.trace} holds no arrivals")
    switch_s = SWITCH_S if args.switch_s is None else args.switch_s
    arrival = table.time / args.time_scale
    notes = [f"SLO {cascade.slo_s:g} s from the app JSON (--slo-s does not apply); stage switch {switch_s:g} s"]
    runs = []
    for name in names:
        run = simulate_cascade(arrival, table.prompt, cascade, args.gpus, make_controller(name, cascade, args.gpus),
                               switch_s=switch_s)
        out = dict(run.summary())
        out["notes"] = notes
        runs.append(out)
    if args.json:
        print(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, default=float))
    else:
        keys = ("policy_set", "requests", "slo_violation_rate", "dropped", "late", "heavy_share", "fid_estimate",
                "latency_p50_s", "latency_p99_s", "stage_switches")
        print("  ".join(f"{k:>18s}" for k in keys))
        for r in runs:
            print("  ".join(f"{r[k]:>18.4g}" if isinstance(r[k], float) else f"{r[k]!s:>18s}" for k in keys))
    return 0
