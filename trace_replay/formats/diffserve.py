"""DiffServe (arXiv 2411.15381) workload files.

- arrival traces ``traces/maf/**/*.txt`` (format ``diffserve``): ``<arrival_ms>,<prompt_index>``
  per line; requests carry a prompt index and no model (the cascade decides the model).
- ``confidence_scores.csv``: per-prompt discriminator confidence of the light and heavy model.
- ``f_t_*.csv``: threshold t -> fraction of queries deferred to the heavy model.
- ``profiling/*.csv``: runtime (ms) by model, accelerator and batch size.
- ``apps/*.json``: the cascade chain and its latency SLO.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trace_replay.formats.csvrows import number, parse_all
from trace_replay.table import RequestTable, SkipReport, TraceFormatError, build_table


def load_arrivals(path: str | Path, lenient: bool = False) -> RequestTable:
    path = Path(path)
    skipped = SkipReport()
    times: list[float] = []
    prompts: list[int] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(",")
            try:
                if len(parts) != 2:
                    raise ValueError(f"expected '<arrival_ms>,<prompt_index>', got {line[:40]!r}")
                t = number(parts[0], "arrival_ms")
                p = number(parts[1], "prompt_index", integral=True)
                if t != t or p != p:
                    raise ValueError("arrival_ms and prompt_index are required")
            except ValueError as exc:
                skipped.raise_or_skip(lenient, str(path), line_no, str(exc))
                continue
            times.append(t / 1000.0)
            prompts.append(int(p))
    return build_table(
        len(times), time=np.array(times), prompt=np.array(prompts, np.int32),
        services=[path.parent.name], source=str(path), format="diffserve", skipped=skipped,
    )


@dataclass(frozen=True)
class ConfidenceScores:
    content_id: np.ndarray  # prompt index
    scores: dict[str, np.ndarray]  # model name -> confidence in [0, 1]


def load_confidence(path: str | Path, lenient: bool = False) -> ConfidenceScores:
    path = Path(path)
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline().strip().split(",")
    models = [h for h in header if h != "content_id"]
    skipped = SkipReport()

    def parse(r: dict[str, str]) -> tuple:
        cid = number(r["content_id"], "content_id", integral=True)
        vals = tuple(number(r[m], m, minimum=0.0) for m in models)
        if cid != cid or any(v != v or v > 1.0 for v in vals):
            raise ValueError("content_id and every score (in [0, 1]) are required")
        return (int(cid), *vals)

    recs = parse_all(path, ("content_id", *models), parse, lenient, skipped)
    arr = np.array(recs, dtype=np.float64).reshape(len(recs), 1 + len(models))
    return ConfidenceScores(arr[:, 0].astype(np.int64), {m: arr[:, 1 + i] for i, m in enumerate(models)})


def load_f_t(path: str | Path, lenient: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(t, f_t), sorted by t; f_t must be a fraction."""
    skipped = SkipReport()

    def parse(r: dict[str, str]) -> tuple:
        t, f = number(r["t"], "t"), number(r["f_t"], "f_t")
        if t != t or f != f or f > 1.0:
            raise ValueError("t and f_t (a fraction) are required")
        return (t, f)

    recs = sorted(parse_all(Path(path), ("t", "f_t"), parse, lenient, skipped))
    arr = np.array(recs, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


@dataclass(frozen=True)
class RuntimeProfile:
    model: str
    accel: str
    batch: np.ndarray
    avg_ms: np.ndarray
    p50_ms: np.ndarray
    p90_ms: np.ndarray
    p95_ms: np.ndarray


def load_profiles(path: str | Path, lenient: bool = False) -> list[RuntimeProfile]:
    cols = ("Model", "Accel", "batchsize", "avg_runtime", "50th_pct", "90th_pct", "95th_pct")
    skipped = SkipReport()

    def parse(r: dict[str, str]) -> tuple:
        nums = [number(r[c], c, integral=(c == "batchsize")) for c in cols[2:]]
        if any(v != v for v in nums):
            raise ValueError("batch size and runtimes are required")
        return (r["Model"], r["Accel"], *nums)

    recs = parse_all(Path(path), cols, parse, lenient, skipped)
    out = []
    for key in sorted({(r[0], r[1]) for r in recs}):
        sel = sorted(r[2:] for r in recs if (r[0], r[1]) == key)
        a = np.array(sel, dtype=np.float64)
        out.append(RuntimeProfile(key[0], key[1], a[:, 0].astype(np.int64), *(a[:, i] for i in range(1, 5))))
    return out


@dataclass(frozen=True)
class AppSpec:
    name: str
    slo_s: float
    chain: list[str]  # tasks in cascade order, the sink excluded
    variants: dict[str, list[str]]


def load_app(path: str | Path) -> AppSpec:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TraceFormatError(str(path), exc.lineno, f"invalid JSON: {exc.msg}") from None
    try:
        slo = float(doc["latencySLOInMSec"]) / 1000.0
        chain, variants, node = [], {}, doc["root"]
        while node is not None:
            if node["task"] != "sink":
                chain.append(node["task"])
                variants[node["task"]] = list(node.get("model_variants", []))
            children = node.get("children") or []
            if len(children) > 1:
                raise ValueError("only chains are supported: a node has several children")
            node = children[0] if children else None
        return AppSpec(str(doc.get("appName", path.stem)), slo, chain, variants)
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceFormatError(str(path), 1, f"not a DiffServe app spec: {exc!r}") from None
