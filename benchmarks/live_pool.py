"""Pool kept `live_coordinator.py` runs of different trace draws into one paired comparison.

Why: one run replays one draw of the trace and its arrivals (``--seed``), and the simulator
finds the violations move more between draws than between the policies: the seed-2 run with 8
base models, re-simulated at six seeds (``live_resimulate.py --seeds``), put the coordinator
anywhere from 3.8% to 12.2% and Ray's defaults from 6.6% to 13.4%. A claim about the control
plane should hold over draws, so this reads the per-request records that ``--keep`` leaves in each
work folder, compares the two arms draw by draw (``t2i compare``'s paired block bootstrap), and
then over every pair of every draw at once: each bootstrap block keeps its own pair, so a draw
that loads the machine more weighs in with its own requests only.

    python benchmarks/live_pool.py /tmp/t2i-live-coordinator-AAAA /tmp/t2i-live-coordinator-BBBB \\
        --out benchmarks/results/live_pool_b16.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import RESULTS, machine_info, write_result  # noqa: E402
from trace_replay.replay.compare import compare, format_comparison, read_records  # noqa: E402
from trace_replay.replay.report import violating  # noqa: E402


def runs_of(work: Path, arm: str) -> dict[str, Path]:
    """{repeat tag ("" for a single run, else "1", "2", ...): parity folder} of ``arm`` in one
    kept work folder (``live_coordinator.run_tag`` names them ARM or ARM-N)."""
    out = {}
    for p in work.glob(f"parity-{arm}*"):
        rest = p.name[len(f"parity-{arm}"):]
        if (p / "records.csv").is_file() and (rest == "" or (rest[0] == "-" and rest[1:].isdigit())):
            out[rest[1:]] = p
    return out


def draw_of(work: Path, baseline: str, arm: str) -> dict:
    """One work folder: its pairs (baseline, arm) by repeat, and what its slice was."""
    a, b = runs_of(work, baseline), runs_of(work, arm)
    tags = sorted(set(a) & set(b), key=lambda t: int(t or 0))
    if not tags:
        raise ValueError(f"{work}: no repeat holds both parity-{baseline} and parity-{arm} records "
                         f"(found {sorted(p.name for p in work.glob('parity-*'))})")
    doc = json.loads((a[tags[0]] / "parity.json").read_text())
    sl = doc.get("slice") or {}
    return {"work": str(work), "seed": sl.get("seed"), "rate": sl.get("rate"), "requests": sl.get("max_requests"),
            "slo_s": float(doc["live_summary"]["slo_s"]),
            "pairs": [(read_records(a[t]), read_records(b[t])) for t in tags], "repeats": tags}


def late_by_base_model(pairs: list, slo_s: float, top: int = 6) -> dict[str, list[int]]:
    """{base model: [requests, A's violations, B's violations]} over ``pairs``, the ``top`` most
    requested models (a policy can trade one model's violations for another's: on the 2-core demo
    Ray's model affinity kept the light model on one replica, the coordinator mixed it with heavy
    requests)."""
    out: dict[str, list[int]] = {}
    for a, b in pairs:  # the pair's two replays sent the same requests
        models, of = np.unique(np.array(a.base_model), return_inverse=True)
        counts = [np.bincount(of, minlength=models.size)]
        counts += [np.bincount(of, weights=violating(rep.latency, rep.completed, slo_s), minlength=models.size)
                   for rep in (a, b)]  # a violation as a replay's summary counts it
        for j, model in enumerate(models):
            row = out.setdefault(str(model), [0, 0, 0])
            for side in range(3):
                row[side] += int(counts[side][j])
    return dict(sorted(out.items(), key=lambda kv: -kv[1][0])[:top])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, nargs="+", help="live_coordinator.py --keep work folders (one per draw)")
    ap.add_argument("--baseline", default="ray-default", help="arm A (default %(default)s)")
    ap.add_argument("--arm", default="coordinator", help="arm B, compared with A (default %(default)s)")
    ap.add_argument("--out", default=str(RESULTS / "live_pool.json"))
    args = ap.parse_args(argv)
    try:
        draws = [draw_of(w, args.baseline, args.arm) for w in args.work]
    except (OSError, ValueError) as exc:
        print(f"live_pool: {exc}", file=sys.stderr)
        return 2
    slos = {d["slo_s"] for d in draws}
    if len(slos) > 1:
        print(f"live_pool: the runs used different SLOs {sorted(slos)}; pool runs of one SLO", file=sys.stderr)
        return 2
    slo = slos.pop()
    rows = []
    print(f"{args.arm} (B) vs {args.baseline} (A), SLO {slo:g} s, 95% paired block-bootstrap intervals")
    print(f"{'draw':>5s} {'req/s':>6s} {'pairs':>5s} | {'viol. A':>7s} {'viol. B':>7s} {'B-A points':>20s} | "
          f"{'load-s B/A':>20s} | {'p99 B/A':>20s}")
    for d in draws:
        res = compare(d["pairs"], slo)
        rows.append({k: v for k, v in d.items() if k != "pairs"} | {"comparison": res})
        pts, load, p99 = res["violation_points"], res["ratio"]["load_seconds"], res["ratio"]["latency_p99_s"]
        print(f"{d['seed']!s:>5s} {d['rate'] or float('nan'):6.2f} {len(d['pairs']):5d} | "
              f"{res['a']['slo_violation_rate']:7.1%} {res['b']['slo_violation_rate']:7.1%} "
              f"{pts[0]:+5.1f} [{pts[1]:+5.1f},{pts[2]:+5.1f}] | "
              f"x{load[0]:.2f} [x{load[1]:.2f},x{load[2]:.2f}] | x{p99[0]:.2f} [x{p99[1]:.2f},x{p99[2]:.2f}]")
    pairs = [p for d in draws for p in d["pairs"]]
    pooled = compare(pairs, slo)
    print(f"\npooled over {len(draws)} draw(s):\n" + format_comparison(pooled, args.baseline, args.arm))
    by_model = late_by_base_model(pairs, slo)
    print(f"\nviolations by base model, pooled: {'requests':>8s} {'A':>5s} {'B':>5s}")
    for model, (n, va, vb) in by_model.items():
        print(f"{model:34s} {n:8d} {va:5d} {vb:5d}")
    write_result(args.out, {"benchmark": "live_pool", "baseline": args.baseline, "arm": args.arm, "slo_s": slo,
                            "draws": rows, "pooled": pooled, "violations_by_base_model": by_model,
                            "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
