"""Simulate the arms of a kept live run again under other profiles: which model of the machine
predicts what the live service did (parity, without replaying live again).

A `benchmarks/live_coordinator.py --keep` work folder holds, per arm, the service config and the
replay's `parity-ARM/parity.json` (the live figures, and the slice: trace, seed, the arrival rate
used). Each arm's slice is rebuilt from the trace and simulated, as `t2i parity` did, once per
profile given; the table shows the live figures beside each prediction and the mean absolute
error of the violation rate over the arms. A profile may be the run's own, one measured later
(`t2i profile` of the same models), or the run's with one field changed (``--set
cluster.host_stretch=[1.12,1.59,2.08]``), to isolate what that field does to the prediction.
Each arm is also predicted once with every request holding its replica for the seconds it
computed live (``t2i parity``'s "sim | live service"): what is left of that error is the control
plane's (queueing, placement, loads), not the profile's service times. With ``--seeds`` every
arm is predicted again at other seeds of its slice (another mapping of the trace onto the models
and other arrival times, as another ``live_coordinator.py --seed`` would replay): how far one
live run's draw is from the others.

Several work folders (one per draw) are predicted in one run, each with its own ``profile.yaml``
unless ``--profile`` names others; the errors are then over every arm of every folder, and the
signed error (prediction minus live) is also given per policy, the repeats of an arm together: a
simulator that models one side's router worse than the other's shows there as a bias.

    python benchmarks/live_resimulate.py /tmp/t2i-live-coordinator-XXXX \\
        --profile /tmp/t2i-live-coordinator-XXXX/profile.yaml --profile /tmp/profile_curve.yaml \\
        --out benchmarks/results/live_resimulate.json
    python benchmarks/live_resimulate.py /tmp/t2i-live-coordinator-A /tmp/t2i-live-coordinator-B \\
        --out benchmarks/results/live_resimulate_draws.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import RESULTS, machine_info, write_result  # noqa: E402

FIGURES = ("slo_violation_rate", "latency_p50_s", "latency_p99_s", "load_seconds")
LIVE_SERVICE = "live service seconds"


def with_fields(profile: Path, sets: list[str], out_dir: Path) -> Path:
    """A copy of ``profile`` with each ``section.field=JSON`` of ``sets`` written in."""
    import yaml

    doc = yaml.safe_load(profile.read_text())
    for item in sets:
        path, sep, value = item.partition("=")
        section, dot, field = path.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set wants section.field=JSON value, got {item!r}")
        doc.setdefault(section, {})[field] = json.loads(value)
    out = out_dir / f"{profile.stem}+{'+'.join(s.partition('=')[0] for s in sets)}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def arm_doc(work: Path, arm: str):
    """(parity.json document, deployment config) of one arm's live replay."""
    from deployments.config import load_config

    return (json.loads((work / f"parity-{arm}" / "parity.json").read_text()),
            load_config(str(work / f"config-{arm}.yaml")))


def figures(result, doc: dict, outside=None) -> dict:
    """FIGURES of a simulated slice, counted as its live replay's summary counts them (the arm's
    SLO and warm-up from its parity document)."""
    from trace_replay.replay.parity import sim_arrays
    from trace_replay.replay.report import slice_stats

    st = slice_stats(*sim_arrays(result, outside), doc["live_summary"]["slo_s"], doc.get("warmup_requests", 0))
    return {k: st[k] for k in FIGURES}


def other_draws(doc: dict, config, trace: Path, profile: Path, seeds: list[int]) -> dict[int, dict]:
    """{seed: FIGURES} of one arm (its ``arm_doc`` and trace) simulated under ``profile`` with its
    slice's seed replaced."""
    from trace_replay.replay.parity_cli import resimulate

    return {seed: figures(resimulate({**doc, "slice": {**doc["slice"], "seed": seed}}, config, profile, trace)[0], doc)
            for seed in seeds}


def policy_of(arm: str) -> str:
    """An arm's policy: its name without the repeat number ``live_coordinator --repeats`` adds."""
    head, sep, tail = arm.rpartition("-")
    return head if sep and tail.isdigit() else arm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, nargs="+", help="live_coordinator.py --keep work folders (one per draw)")
    ap.add_argument("--profile", type=Path, action="append", default=[],
                    help="a simulator profile to predict with (repeat for several; default: each folder's own "
                    "profile.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=JSON",
                    help="also predict with the first profile plus these fields (repeatable, all applied together)")
    ap.add_argument("--seeds", default="", metavar="S1,S2,...",
                    help="also predict every arm with the first profile at these seeds of its slice (the "
                    "seed that maps the trace's requests onto the models and draws their arrivals; same trace "
                    "and rate): how much one live run's draw moves the figures")
    ap.add_argument("--out", default=str(RESULTS / "live_resimulate.json"))
    args = ap.parse_args()
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds wants comma-separated integers, got {args.seeds!r}")
    from trace_replay.replay.compare import read_records
    from trace_replay.replay.parity_cli import resimulate

    folders = {}
    for work in args.work:
        arms = sorted(p.name[len("parity-"):] for p in work.glob("parity-*") if (p / "parity.json").exists())
        if not arms:
            ap.error(f"{work} holds no parity-ARM/parity.json")
        profiles = list(args.profile) or [work / "profile.yaml"]
        missing = [str(p) for p in profiles if not p.is_file()]
        if missing:
            ap.error(f"no such profile: {', '.join(missing)}")
        if args.set:
            profiles.append(with_fields(profiles[0], args.set, Path(tempfile.mkdtemp(prefix="t2i-resim-"))))
        folders[work] = (arms, profiles)
    several = len(folders) > 1
    rows: dict = {}
    by_seed: dict = {}  # arm -> {seed: FIGURES}, with --seeds
    for work, (arms, profiles) in folders.items():
        for arm in arms:
            key = f"{work.name}/{arm}" if several else arm
            doc, config = arm_doc(work, arm)
            rows[key] = {"live": {k: doc["live"][k] for k in FIGURES}, "sim": {}}
            trace = work / Path(doc["slice"]["trace"]).name if "slice" in doc else None
            for prof in profiles:
                try:
                    result, _, _, _ = resimulate(doc, config, prof, trace)
                except ValueError as exc:
                    raise SystemExit(f"{work}/parity-{arm}: {exc}") from None
                rows[key]["sim"][prof.name] = figures(result, doc)
            # the first profile again, each request holding its replica for the seconds it computed live
            result, _, _, outside = resimulate(doc, config, profiles[0], trace, live=read_records(work / f"parity-{arm}"))
            rows[key]["sim"][LIVE_SERVICE] = figures(result, doc, outside)
            if seeds:
                by_seed[key] = other_draws(doc, config, trace, profiles[0], seeds)
    print(f"{'arm':22s} {'prediction from':34s} {'viol.':>7s} {'p50':>6s} {'p99':>6s} {'load-s':>7s}")
    errors: dict = {}
    signed: dict = {}  # label -> policy -> [prediction - live]
    for arm, row in rows.items():
        for label, fig in [("live", row["live"]), *row["sim"].items()]:
            print(f"{arm[-22:]:22s} {label[:34]:34s} {fig['slo_violation_rate']:7.1%} {fig['latency_p50_s']:6.2f} "
                  f"{fig['latency_p99_s']:6.2f} {fig['load_seconds']:7.1f}")
            if label != "live":
                d = fig["slo_violation_rate"] - row["live"]["slo_violation_rate"]
                errors.setdefault(label, []).append(abs(d))
                signed.setdefault(label, {}).setdefault(policy_of(arm.rpartition("/")[2]), []).append(d)
    for label, e in errors.items():
        print(f"mean |violation error| over {len(e)} arms, {label}: {100 * sum(e) / len(e):.1f} points")
        for policy, d in signed[label].items():
            print(f"    {policy}: prediction - live, mean over {len(d)} arms: {100 * sum(d) / len(d):+.1f} points")
    if seeds:
        print("\nthe first profile at other seeds of each arm's slice: violations per seed, mean")
        for arm, figs in by_seed.items():
            viol = [f["slo_violation_rate"] for f in figs.values()]
            print(f"{arm[-22:]:22s} " + " ".join(f"{s}: {v:5.1%}" for s, v in zip(figs, viol))
                  + f"  mean {sum(viol) / len(viol):5.1%}")
    write_result(args.out, {"benchmark": "live_resimulate", "work": [str(w) for w in folders] if several else str(args.work[0]),
                            "arms": rows,
                            "mean_abs_violation_error": {k: sum(v) / len(v) for k, v in errors.items()},
                            "mean_violation_error_by_policy": {k: {p: sum(d) / len(d) for p, d in v.items()}
                                                               for k, v in signed.items()},
                            "profiles": sorted({str(p) for _, profs in folders.values() for p in profs}),
                            "sets": args.set, "by_seed": by_seed, "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
