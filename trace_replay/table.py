"""The one request table every trace format loads into.

Columnar numpy arrays, one row per request, categorical columns as int codes into small string
vocabularies, and the variable-length adapter lists in CSR form (offsets into flat arrays), so a
3.5M-request trace is a few hundred MB of arrays rather than millions of Python objects, and
analyses are vectorised numpy.

Adapters of one request are stored in access order: ControlNets as listed, then LoRAs as listed
(null entries are dropped at load time: they are not adapters).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

CONTROLNET, LORA = 0, 1
ADAPTER_KINDS = ("controlnet", "lora")


class TraceFormatError(ValueError):
    """A malformed row: the message names the file and the line."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = path, line, reason


@dataclass
class SkipReport:
    """Rows skipped under --lenient: counted and shown, never silently dropped."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, path: str, line: int, reason: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(f"{path}:{line}: {reason}")

    def raise_or_skip(self, lenient: bool, path: str, line: int, reason: str) -> None:
        if not lenient:
            raise TraceFormatError(path, line, reason)
        self.add(path, line, reason)


def encode(values: list | np.ndarray, none_code: int = -1) -> tuple[np.ndarray, list[str]]:
    """Dictionary-encode strings; None (or "") becomes ``none_code``. Vocabulary is sorted."""
    arr = np.asarray(values, dtype=object)
    missing = np.array([v is None or v == "" for v in arr], dtype=bool) if arr.size else np.zeros(0, bool)
    present = arr[~missing].astype(str)
    vocab, inv = np.unique(present, return_inverse=True)
    codes = np.full(arr.shape[0], none_code, dtype=np.int32)
    codes[~missing] = inv
    return codes, [str(v) for v in vocab]


@dataclass
class RequestTable:
    """Requests in one columnar table (see module docstring). -1 / NaN mean unknown."""

    time: np.ndarray  # float64, seconds
    service: np.ndarray  # int32 code into services (tenant / user group / scene)
    instance: np.ndarray  # int32 code into instances; a trace without instances has one
    base_model: np.ndarray  # int32 code into base_models, -1 = none
    task: np.ndarray  # int32 code into tasks, -1 = unknown
    status: np.ndarray  # int32 code into statuses, -1 = unknown
    steps: np.ndarray  # int32, -1 = unknown
    images: np.ndarray  # int32 images per request, -1 = unknown
    exec_s: np.ndarray  # float32 execution time, NaN = unknown
    n_controlnets: np.ndarray  # int16 declared ControlNet count
    n_loras: np.ndarray  # int16 declared LoRA count (known even where ids are not)
    prompt: np.ndarray  # int32 prompt index, -1 = unknown
    adapter_offsets: np.ndarray  # int64, len = n + 1
    adapter_kind: np.ndarray  # int8, CONTROLNET or LORA
    adapter_id: np.ndarray  # int32 code into controlnet_ids / lora_ids by kind
    adapter_scale: np.ndarray  # float32, NaN = unknown
    services: list[str]
    instances: list[str]
    base_models: list[str]
    tasks: list[str]
    statuses: list[str]
    controlnet_ids: list[str]
    lora_ids: list[str]
    source: str = ""
    format: str = ""
    skipped: SkipReport = field(default_factory=SkipReport)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.time.shape[0])

    @property
    def n_adapters(self) -> int:
        return int(self.adapter_offsets[-1])

    def adapter_request(self) -> np.ndarray:
        """Row index of every flat adapter entry."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.adapter_offsets))

    def adapter_names(self, kind: int) -> list[str]:
        return self.controlnet_ids if kind == CONTROLNET else self.lora_ids

    def take(self, rows: np.ndarray) -> RequestTable:
        """Rows by index or boolean mask (order kept), adapters carried along."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        starts, ends = self.adapter_offsets[rows], self.adapter_offsets[rows + 1]
        counts = ends - starts
        offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        # flat index of every kept adapter entry, built without a Python loop
        flat = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1], dtype=np.int64)
        per_row = {
            name: getattr(self, name)[rows]
            for name in ("time", "service", "instance", "base_model", "task", "status", "steps",
                         "images", "exec_s", "n_controlnets", "n_loras", "prompt")
        }
        return replace(
            self, **per_row, adapter_offsets=offsets, adapter_kind=self.adapter_kind[flat],
            adapter_id=self.adapter_id[flat], adapter_scale=self.adapter_scale[flat],
        )

    def time_order(self) -> np.ndarray:
        """Requests in timestamp order, file order breaking ties (stable sort)."""
        return np.argsort(self.time, kind="stable")

    def sorted_by_time(self) -> RequestTable:
        order = self.time_order()
        if np.all(order[1:] > order[:-1]):
            return self
        return self.take(order)

    def for_service(self, name: str | None) -> RequestTable:
        if name is None:
            return self
        if name not in self.services:
            raise ValueError(f"service {name!r} not in trace; services: {', '.join(self.services)}")
        return self.take(self.service == self.services.index(name))

    def summary(self) -> dict[str, object]:
        return {
            "requests": len(self), "services": len(self.services), "instances": len(self.instances),
            "base_models": len(self.base_models), "controlnets": len(self.controlnet_ids),
            "loras": len(self.lora_ids), "adapter_entries": self.n_adapters,
            "skipped_rows": self.skipped.count,
        }


def build_table(
    n: int,
    *,
    time: np.ndarray,
    adapter_offsets: np.ndarray | None = None,
    adapter_kind: np.ndarray | None = None,
    adapter_id: np.ndarray | None = None,
    adapter_scale: np.ndarray | None = None,
    **columns: object,
) -> RequestTable:
    """Fill the columns a format lacks with 'unknown' so loaders only state what they know."""

    def col(name: str, dtype: type, fill: float) -> np.ndarray:
        value = columns.pop(name, None)
        return np.full(n, fill, dtype=dtype) if value is None else np.asarray(value, dtype=dtype)

    if adapter_offsets is None:
        adapter_offsets = np.zeros(n + 1, dtype=np.int64)
    n_ad = int(adapter_offsets[-1])
    kinds = np.zeros(n_ad, np.int8) if adapter_kind is None else np.asarray(adapter_kind, np.int8)
    lists = {k: columns.pop(k, None) for k in
             ("services", "instances", "base_models", "tasks", "statuses", "controlnet_ids", "lora_ids")}
    per_req = np.diff(adapter_offsets)
    default_cn = np.bincount(np.repeat(np.arange(n), per_req)[kinds == CONTROLNET], minlength=n)
    default_lora = np.bincount(np.repeat(np.arange(n), per_req)[kinds == LORA], minlength=n)
    service = col("service", np.int32, 0)
    instance = col("instance", np.int32, 0)
    table = RequestTable(
        time=np.asarray(time, dtype=np.float64),
        service=service,
        instance=instance,
        base_model=col("base_model", np.int32, -1),
        task=col("task", np.int32, -1),
        status=col("status", np.int32, -1),
        steps=col("steps", np.int32, -1),
        images=col("images", np.int32, -1),
        exec_s=col("exec_s", np.float32, np.nan),
        n_controlnets=col("n_controlnets", np.int16, 0) if "n_controlnets" in columns
        else default_cn.astype(np.int16),
        n_loras=col("n_loras", np.int16, 0) if "n_loras" in columns else default_lora.astype(np.int16),
        prompt=col("prompt", np.int32, -1),
        adapter_offsets=np.asarray(adapter_offsets, dtype=np.int64),
        adapter_kind=kinds,
        adapter_id=np.zeros(n_ad, np.int32) if adapter_id is None else np.asarray(adapter_id, np.int32),
        adapter_scale=np.full(n_ad, np.nan, np.float32) if adapter_scale is None
        else np.asarray(adapter_scale, np.float32),
        services=lists["services"] or ["all"],
        instances=lists["instances"] or ["all"],
        base_models=lists["base_models"] or [],
        tasks=lists["tasks"] or [],
        statuses=lists["statuses"] or [],
        controlnet_ids=lists["controlnet_ids"] or [],
        lora_ids=lists["lora_ids"] or [],
    )
    for key in ("source", "format", "skipped", "notes"):
        if key in columns:
            setattr(table, key, columns.pop(key))
    if columns:
        raise TypeError(f"unknown request-table columns: {sorted(columns)}")
    return table
