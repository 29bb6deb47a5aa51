"""Two replays of the same slice, paired request by request: B's figures over A's, with 95%
confidence intervals from a block bootstrap (``t2i compare A B``).

Why: one live run of a few hundred requests gives a violation rate whose noise is a few points
(a queue that builds once makes a dozen requests late together), and a benchmark that prints
"16.0% against 10.8%" does not say whether that is the policy or the draw. Both replays sent the
very same requests at the very same times, so the comparison is paired: the requests are cut
into consecutive blocks (``block`` requests each, long enough that one queue episode sits inside
one block), blocks are drawn with replacement, and every figure is recomputed for A and B on the
same draw (scipy.stats.bootstrap, percentile intervals). An interval that holds 1 (ratios) or 0
(the difference in violations) means the run cannot tell the two apart on that figure.

Figures, B relative to A: load-seconds the requests reported (prefetches run on no request's path
and are not in the records), p50 and p99 latency of completed requests, and SLO violations (late,
failed or not completed) as a difference in points and as a ratio.
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import DegenerateDataWarning, bootstrap

from trace_replay.replay.parity import live_service
from trace_replay.replay.report import slice_stats

FIGURES = ("load_seconds", "latency_p50_s", "latency_p99_s", "slo_violation_rate")
DEFAULT_BLOCK = 25
DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Replay:
    """One replay's sent requests, in request order."""

    index: np.ndarray  # request index in the slice
    base_model: list[str]
    latency: np.ndarray
    completed: np.ndarray  # bool
    load_s: np.ndarray
    replica: list[str]  # the BaseModel replica that answered ("" if none did)
    compute_s: np.ndarray  # seconds holding the replica, NaN if not completed (parity.live_service)
    outside_s: np.ndarray  # seconds on the service outside the replica's queue, load and compute


def read_records(path: str | Path) -> Replay:
    """A replay's ``records.csv`` (or the folder holding it: ``t2i replay --out`` and ``t2i
    parity --out`` write one). Requests never sent are left out, as the summary leaves them."""
    p = Path(path)
    if p.is_dir():
        p = p / "records.csv"
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no records.csv there (a `t2i replay` or `t2i parity` --out folder)")
    with p.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("outcome") != "not_sent"]
    missing = {"index", "latency_s", "outcome", "base_model", "load_s"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{p}: not a replay's records (no column {sorted(missing)})" if rows
                         else f"{p}: no sent requests")
    rows.sort(key=lambda r: int(r["index"]))

    def num(v: str) -> float:
        return float(v) if v not in ("", None) else float("nan")

    col = lambda name: np.array([num(r.get(name, "")) for r in rows])  # noqa: E731
    completed = np.array([r["outcome"] == "completed" for r in rows], bool)
    load = np.nan_to_num(col("load_s"))
    compute, outside = live_service(col("inference_s"), col("sent_s"), col("done_s"), col("queue_s"), load, completed)
    return Replay(index=np.array([int(r["index"]) for r in rows]), base_model=[r["base_model"] for r in rows],
                  latency=col("latency_s"), completed=completed, load_s=load,
                  replica=[r.get("replica") or "" for r in rows], compute_s=compute, outside_s=outside)


def check_paired(a: Replay, b: Replay) -> None:
    """Both replays must be the same requests: same indices, same base model at each."""
    if a.index.size != b.index.size or not np.array_equal(a.index, b.index):
        raise ValueError(f"not the same slice: A sent {a.index.size} requests, B {b.index.size}, or their "
                         "request indices differ (compare replays of one trace, seed and request count)")
    for i, (x, y) in enumerate(zip(a.base_model, b.base_model)):
        if x != y:
            raise ValueError(f"not the same slice: request {int(a.index[i])} is {x} in A and {y} in B")


def _figures(lat: np.ndarray, done: np.ndarray, load: np.ndarray, slo_s: float) -> np.ndarray:
    """``FIGURES`` of a set of requests, as a replay's summary defines them (``slice_stats``)."""
    stats = slice_stats(lat, done, load, slo_s)
    return np.array([stats[f] for f in FIGURES])


def _relative(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """B over A for every figure, then B - A in violation points (NaN where A's figure is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(fa != 0, fb / fa, np.nan)
    return np.append(ratio, fb[3] - fa[3])


def compare(pairs: list[tuple[Replay, Replay]], slo_s: float, block: int = DEFAULT_BLOCK,
            n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """B relative to A over one or more pairs of replays (repeats of one comparison pool their
    blocks: each block keeps its own pair). Returns A's and B's figures, the point estimates and
    their 95% intervals: ``{"a": {...}, "b": {...}, "ratio": {fig: [point, low, high]},
    "violation_points": [point, low, high], "blocks": n, "requests": n}``."""
    if block < 1:
        raise ValueError(f"block must be >= 1 request, got {block}")
    if not slo_s > 0:
        raise ValueError(f"slo_s must be > 0 seconds, got {slo_s}")
    if not pairs:
        raise ValueError("no pairs of replays to compare")
    blocks: list[tuple[tuple, tuple]] = []  # per block: A's and B's (latency, completed, load_s)
    for a, b in pairs:
        check_paired(a, b)
        for s0 in range(0, a.index.size, block):
            rows = slice(s0, s0 + block)
            blocks.append(tuple((r.latency[rows], r.completed[rows], r.load_s[rows]) for r in (a, b)))
    if len(blocks) < 2:
        raise ValueError(f"{sum(a.index.size for a, _ in pairs)} requests make {len(blocks)} block(s) of "
                         f"{block}: too few to resample (use a smaller --block)")

    def figures_of(ids) -> tuple[np.ndarray, np.ndarray]:
        """A's and B's figures over the drawn blocks (pairs pooled: each block keeps its pair)."""
        return tuple(_figures(*(np.concatenate([blocks[i][side][j] for i in ids]) for j in range(3)), slo_s)
                     for side in (0, 1))

    def statistic(ids: np.ndarray) -> np.ndarray:
        return _relative(*figures_of(ids))

    all_ids = np.arange(len(blocks))
    fa, fb = figures_of(all_ids)
    point = _relative(fa, fb)
    with warnings.catch_warnings():  # a figure equal on every draw (no loads at all) is an answer:
        warnings.simplefilter("ignore", DegenerateDataWarning)  # its interval is the point
        res = bootstrap((all_ids,), statistic, vectorized=False, n_resamples=n_resamples, method="percentile",
                        rng=np.random.default_rng(seed))
    low, high = res.confidence_interval.low, res.confidence_interval.high
    out = {"a": dict(zip(FIGURES, map(float, fa))), "b": dict(zip(FIGURES, map(float, fb))),
           "ratio": {f: [float(point[i]), float(low[i]), float(high[i])] for i, f in enumerate(FIGURES)},
           "violation_points": [float(point[4]) * 100, float(low[4]) * 100, float(high[4]) * 100],
           "blocks": len(blocks), "block": block, "requests": int(sum(a.index.size for a, _ in pairs)),
           "pairs": len(pairs), "confidence": 0.95, "n_resamples": n_resamples, "slo_s": slo_s}
    return out


def format_comparison(res: dict, a_name: str = "A", b_name: str = "B") -> str:
    """A readable table of ``compare``'s result."""
    lines = [f"B = {b_name} vs A = {a_name}: {res['requests']} requests per side in {res['pairs']} pair(s), "
             f"{res['blocks']} blocks of {res['block']}, 95% block-bootstrap intervals",
             f"{'figure':22s} {'A':>12s} {'B':>12s}   {'B/A':>6s}  {'95% interval':>17s}"]
    fmt = {"load_seconds": "{:12.1f}", "latency_p50_s": "{:12.2f}", "latency_p99_s": "{:12.2f}",
           "slo_violation_rate": "{:12.1%}"}
    for f in FIGURES:
        p, lo, hi = res["ratio"][f]
        lines.append(f"{f:22s} {fmt[f].format(res['a'][f])} {fmt[f].format(res['b'][f])}   x{p:5.2f}  "
                     f"[x{lo:5.2f}, x{hi:5.2f}]")
    p, lo, hi = res["violation_points"]
    lines.append(f"{'violations, B - A':22s} {'':12s} {'':12s}   {p:+5.1f}  [{lo:+5.1f}, {hi:+5.1f}] points")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="t2i compare", description=__doc__.split("\n\n")[0],
                                 epilog="Example: t2i compare runs/ray-default runs/coordinator --slo-s 3. "
                                 "Repeats: --pair A2 B2 (as many as there are).")
    ap.add_argument("a", help="the baseline replay: its records.csv or the --out folder holding it")
    ap.add_argument("b", help="the replay compared with it, of the same slice")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                    help="another pair of the same comparison (a repeat), pooled with the first")
    ap.add_argument("--slo-s", type=float, required=True, help="latency SLO of the violation rate, seconds")
    ap.add_argument("--block", type=int, default=DEFAULT_BLOCK, help="consecutive requests per bootstrap "
                    "block (default %(default)s: longer than a queue episode at these rates)")
    ap.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples "
                    "(default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    try:
        pairs = [(read_records(x), read_records(y)) for x, y in [(args.a, args.b), *args.pair]]
        res = compare(pairs, args.slo_s, args.block, args.resamples, args.seed)
    except (OSError, ValueError) as exc:
        print(f"t2i compare: {exc}", file=sys.stderr)
        return 2
    if args.json:
        import json

        print(json.dumps(res))
    else:
        print(format_comparison(res, Path(args.a).name or "A", Path(args.b).name or "B"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
