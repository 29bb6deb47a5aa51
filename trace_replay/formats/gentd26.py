"""Alibaba GenTD26 (clusterdata cluster-trace-v2026-GenAI): request traces and component metrics.

- ``lora_request_trace.csv`` (format ``gentd26-requests``): timestamped requests with base model,
  user group (the tenant), task type, status and the *number* of LoRAs, not their ids.
- ``data_trace_processed.csv`` (format ``gentd26-processed``): base model, LoRA ids and scales,
  no timestamps. Arrival times come from a documented seeded process (see ``load_processed``).
- ``*_latency*.csv`` and friends: per-container samples (ms) used as empirical distributions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trace_replay import arrivals
from trace_replay.formats.csvrows import number, parse_all, rows
from trace_replay.table import LORA, RequestTable, SkipReport, build_table, encode

_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_LORA_ITEM = r"\{'modelVersionId': '([^']+)', 'scale': ([-+0-9.eE]+)\}"
_LORA_LIST = re.compile(rf"^\[(?:{_LORA_ITEM}(?:, {_LORA_ITEM})*)?\]$")
_LORA_ITEMS = re.compile(_LORA_ITEM)

REQUEST_COLUMNS = ("gmt_create", "predict_type", "predict_status", "exec_time_seconds", "groupId",
                   "num_images_per_prompt", "num_inference_steps", "checkpoint_model_version_id",
                   "num_lora")
PROCESSED_COLUMNS = ("predict_type", "exec_time_seconds", "num_images_per_prompt",
                     "num_inference_steps", "checkpoint_model_version_id", "lora_args")
# component kind -> file of load-latency (or inference-latency) samples, values in ms
COMPONENT_FILES = {
    "base_model": "basemodel_update_latency_anon.csv",
    "lora": "lora_update_latency_anon.csv",
    "controlnet": "controlnet_latency_data_anon.csv",
    "pipeline": "pipeline_update_latency_anon.csv",
    "inference": "model_predict_data_anon.csv",
    "end_to_end": "pipeline_inference_data_anon.csv",
}


def _int_or_unknown(v: float) -> int:
    return -1 if v != v else int(v)


def load_requests(path: str | Path, lenient: bool = False) -> RequestTable:
    """``lora_request_trace.csv``: times are UTC wall clock, returned as epoch seconds."""
    path = Path(path)
    skipped = SkipReport()

    def parse(r: dict[str, str]) -> tuple:
        if not _TIME.match(r["gmt_create"]):
            raise ValueError(f"column 'gmt_create': {r['gmt_create']!r} is not 'YYYY-MM-DD HH:MM:SS'")
        try:
            stamp = int(np.datetime64(r["gmt_create"].replace(" ", "T"), "s").astype(np.int64))
        except ValueError:
            raise ValueError(f"column 'gmt_create': {r['gmt_create']!r} is not a valid time") from None
        return (stamp, r["predict_type"], r["predict_status"],
                number(r["exec_time_seconds"], "exec_time_seconds"), r["groupId"],
                number(r["num_images_per_prompt"], "num_images_per_prompt", integral=True),
                number(r["num_inference_steps"], "num_inference_steps", integral=True),
                r["checkpoint_model_version_id"],
                number(r["num_lora"], "num_lora", integral=True))

    recs = parse_all(path, REQUEST_COLUMNS, parse, lenient, skipped)
    n = len(recs)
    service, services = encode([r[4] for r in recs])
    task, tasks = encode([r[1] for r in recs])
    status, statuses = encode([r[2] for r in recs])
    base, bases = encode([r[7] for r in recs])
    n_loras = np.array([max(_int_or_unknown(r[8]), 0) for r in recs], dtype=np.int16)
    return build_table(
        n, time=np.array([r[0] for r in recs], dtype=np.float64), service=service, task=task,
        status=status, base_model=base, exec_s=np.array([r[3] for r in recs], np.float32),
        images=[_int_or_unknown(r[5]) for r in recs], steps=[_int_or_unknown(r[6]) for r in recs],
        n_loras=n_loras, services=services, tasks=tasks, statuses=statuses, base_models=bases,
        source=str(path), format="gentd26-requests", skipped=skipped,
        notes=["LoRA ids are not in this file: n_loras only, no adapter accesses"],
    )


def load_processed(
    path: str | Path, lenient: bool = False, *, arrival: str = "qps", qps_path: str | Path | None = None,
    seed: int = 0, mean_qps: float | None = None,
) -> RequestTable:
    """``data_trace_processed.csv`` in row order, with arrival times drawn as documented:

    - ``arrival="qps"`` (default): a Poisson process whose rate has the shape of the cluster-total
      QPS in ``qps.csv`` (summed across containers per sampling instant). The shape spans its own
      day unless ``mean_qps`` is given, which stretches it to ``n / mean_qps`` seconds.
    - ``arrival="poisson"``: homogeneous Poisson at ``mean_qps`` (default 1 request/s).
    The k-th row gets the k-th earliest time, so row order is the arrival order.
    """
    path = Path(path)
    skipped = SkipReport()

    def parse(r: dict[str, str]) -> tuple:
        args = r["lora_args"].strip()
        if args in ("", "[]"):
            loras: list[tuple[str, float]] = []
        elif _LORA_LIST.match(args):
            loras = [(m[0], number(m[1], "lora_args scale", minimum=None)) for m in _LORA_ITEMS.findall(args)]
        else:
            raise ValueError(f"column 'lora_args': cannot parse {args[:60]!r}")
        return (r["predict_type"], number(r["exec_time_seconds"], "exec_time_seconds"),
                number(r["num_images_per_prompt"], "num_images_per_prompt", integral=True),
                number(r["num_inference_steps"], "num_inference_steps", integral=True),
                r["checkpoint_model_version_id"], loras)

    recs = parse_all(path, PROCESSED_COLUMNS, parse, lenient, skipped)
    n = len(recs)
    rng = np.random.default_rng(seed)
    notes = [f"arrival times: {arrival} process, seed {seed}" + (f", mean {mean_qps} req/s" if mean_qps else "")]
    if arrival == "qps":
        shape = qps_shape(qps_path or Path(path).with_name("qps.csv"))
        if mean_qps:
            shape = shape.scaled_to(n / mean_qps)
        times = arrivals.draw_arrivals(n, shape, rng) if n else np.zeros(0)
    elif arrival == "poisson":
        times = arrivals.homogeneous(n, mean_qps or 1.0, rng)
    else:
        raise ValueError(f"arrival must be 'qps' or 'poisson', got {arrival!r}")
    task, tasks = encode([r[0] for r in recs])
    base, bases = encode([r[4] for r in recs])
    lora_names = [name for r in recs for name, _ in r[5]]
    codes, lora_vocab = encode(lora_names)
    counts = np.array([len(r[5]) for r in recs], dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return build_table(
        n, time=times, task=task, base_model=base, exec_s=np.array([r[1] for r in recs], np.float32),
        images=[_int_or_unknown(r[2]) for r in recs], steps=[_int_or_unknown(r[3]) for r in recs],
        adapter_offsets=offsets, adapter_kind=np.full(codes.size, LORA, np.int8), adapter_id=codes,
        adapter_scale=np.array([s for r in recs for _, s in r[5]], np.float32),
        tasks=tasks, base_models=bases, lora_ids=lora_vocab, source=str(path),
        format="gentd26-processed", skipped=skipped, notes=notes,
    )


@dataclass(frozen=True)
class MetricSamples:
    """One GenTD26 metric file: per-container samples."""

    time: np.ndarray  # timestamp_anon, seconds (shifted)
    value: np.ndarray  # unit depends on the file (ms for latencies)
    container: np.ndarray  # int32 code into containers, -1 = unknown ("" or NULL)
    containers: list[str]
    extra: dict[str, np.ndarray]  # further columns by name (e.g. qps.csv request_type codes)


def load_metric(path: str | Path, lenient: bool = False, extra: tuple[str, ...] = ()) -> MetricSamples:
    path = Path(path)
    skipped = SkipReport()

    def parse(r: dict[str, str]) -> tuple:
        t = number(r["timestamp_anon"], "timestamp_anon")
        v = number(r["value"], "value", minimum=None)
        if t != t or v != v:
            raise ValueError("timestamp_anon and value are required")
        ip = r["container_ip"]
        return (t, v, None if ip in ("", "NULL") else ip, *(r[c] for c in extra))

    recs = parse_all(path, ("timestamp_anon", "value", "container_ip", *extra), parse, lenient, skipped)
    container, containers = encode([r[2] for r in recs])
    ex = {c: np.array([r[3 + i] for r in recs], dtype=object) for i, c in enumerate(extra)}
    return MetricSamples(np.array([r[0] for r in recs]), np.array([r[1] for r in recs]),
                         container, containers, ex)


def qps_shape(path: str | Path, request_type: str | None = None, window_s: float = 300.0) -> arrivals.RateShape:
    """Cluster-total QPS shape from ``qps.csv`` (all request types unless one is named)."""
    m = load_metric(path, extra=("request_type",))
    keep = np.ones(m.time.size, bool) if request_type is None else m.extra["request_type"] == request_type
    return arrivals.shape_from_samples(m.time[keep], m.value[keep], window_s)


@dataclass(frozen=True)
class Empirical:
    """An empirical distribution of seconds, for the simulator to sample."""

    kind: str
    values_s: np.ndarray  # sorted

    def sample(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray | float:
        return rng.choice(self.values_s, size=n)

    def quantile(self, q: float | np.ndarray) -> np.ndarray | float:
        return np.quantile(self.values_s, q)


def load_component_latencies(data_dir: str | Path, lenient: bool = False) -> dict[str, Empirical]:
    """Load-time (and inference-time) distributions per component kind, in seconds."""
    out: dict[str, Empirical] = {}
    for kind, name in COMPONENT_FILES.items():
        path = Path(data_dir) / name
        if path.exists():
            m = load_metric(path, lenient)
            out[kind] = Empirical(kind, np.sort(m.value) / 1000.0)
    if not out:
        raise FileNotFoundError(f"no GenTD26 latency files in {data_dir} (expected {list(COMPONENT_FILES.values())})")
    return out


__all__ = ["load_requests", "load_processed", "load_metric", "qps_shape", "load_component_latencies",
           "Empirical", "MetricSamples", "rows"]
