"""Trace requests -> requests the live service accepts, keeping the trace's popularity ranks.

Production traces name anonymous ids (hundreds of base models, thousands of LoRAs); the service
serves a registry (``GET /v1/models``). The mapping is deterministic and rank-preserving: within
the replayed slice, the most requested trace base model becomes the registry's first base model,
the second the second, and so on, wrapping around when the trace has more ids than the registry
(rank r -> registry entry r mod K). LoRAs and ControlNets map the same way among the adapters that
apply to the request's mapped base model. A trace request with no base model gets the service's
default one.

What the service would refuse by its limits is trimmed here and counted, never sent to fail:
adapters beyond the per-request maxima (the first ones are kept, as listed), two trace adapters
that land on the same registry id, adapters with no registry entry applicable to the base, images
and steps above the maxima.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from trace_replay.table import CONTROLNET, LORA, RequestTable, build_table


@dataclass(frozen=True)
class Registry:
    """What the service serves, as ``GET /v1/models`` lists it (registry order kept)."""

    bases: list[str]
    loras: list[str]
    controlnets: list[str]
    applies_to: dict[str, list[str]]  # adapter id -> base ids it is limited to ([] = all)
    default_steps: dict[str, int]
    default_base: str
    max_images: int = 4
    max_steps: int = 100
    max_loras: int = 3
    max_controlnets: int = 2
    slo_s: float | None = None

    @classmethod
    def from_models_response(cls, doc: dict) -> Registry:
        """Parse ``GET /v1/models``; names what is missing when the answer is not a registry."""
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise ValueError("GET /v1/models did not answer a model list ({'data': [...]})")
        by_kind: dict[str, list[str]] = {"base": [], "lora": [], "controlnet": []}
        applies, steps = {}, {}
        for m in doc["data"]:
            kind = m.get("kind")
            if kind in by_kind:
                by_kind[kind].append(m["id"])
                applies[m["id"]] = list(m.get("base_models") or [])
            if kind == "base":
                steps[m["id"]] = int(m.get("default_steps") or 25)
        if not by_kind["base"]:
            raise ValueError("GET /v1/models lists no base model: nothing to replay against")
        extra = doc.get("t2i") or {}
        limits = extra.get("limits") or {}
        return cls(
            bases=by_kind["base"], loras=by_kind["lora"], controlnets=by_kind["controlnet"],
            applies_to=applies, default_steps=steps,
            default_base=extra.get("default_base_model") or by_kind["base"][0],
            max_images=int(limits.get("max_images_per_request", 4)),
            max_steps=int(limits.get("max_steps", 100)),
            max_loras=int(limits.get("max_loras_per_request", 3)),
            max_controlnets=int(limits.get("max_controlnets_per_request", 2)),
            slo_s=extra.get("slo_s"),
        )

    def without(self, ids: set[str]) -> Registry:
        """The registry less ``ids`` (an unknown id is an error: a typo must not pass silently)."""
        from dataclasses import replace

        unknown = ids - set(self.bases) - set(self.loras) - set(self.controlnets)
        if unknown:
            raise ValueError(f"--exclude names ids the service does not serve: {sorted(unknown)}")
        bases = [b for b in self.bases if b not in ids]
        if not bases:
            raise ValueError("--exclude leaves no base model to replay against")
        default = self.default_base if self.default_base in bases else bases[0]
        return replace(self, bases=bases, loras=[a for a in self.loras if a not in ids],
                       controlnets=[c for c in self.controlnets if c not in ids], default_base=default)

    def applicable(self, kind: str, base: str) -> list[str]:
        ids = self.loras if kind == "lora" else self.controlnets
        return [a for a in ids if not self.applies_to.get(a) or base in self.applies_to[a]]


def conditioning_image_b64(width: int = 64, height: int = 64) -> str:
    """A fixed ControlNet conditioning image, base64 PNG: a white square on black, which every
    edge detector finds edges in (the replay driver and ``t2i profile`` both send it)."""
    import base64
    import io

    from PIL import Image

    image = np.zeros((height, width, 3), np.uint8)
    image[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class ReplayRequest:
    """One request as it will be sent: ``time_s`` is its arrival, relative to the replay start."""

    index: int  # row in the replayed slice
    time_s: float
    base_model: str
    loras: tuple[tuple[str, float], ...]
    controlnets: tuple[str, ...]
    steps: int
    n: int
    seed: int

    def body(self, control_image_b64: str | None) -> dict:
        out: dict = {"prompt": f"trace request {self.index}", "base_model": self.base_model,
                     "num_inference_steps": self.steps, "n": self.n, "seed": self.seed}
        if self.loras:
            out["loras"] = [{"id": a, "scale": s} for a, s in self.loras]
        if self.controlnets:
            if control_image_b64 is None:
                raise ValueError("a request with ControlNets needs a conditioning image")
            out["controlnets"] = [{"id": c, "image": control_image_b64} for c in self.controlnets]
        return out


@dataclass
class MappingReport:
    """How the trace was fitted to the registry: the id tables and every trim, counted."""

    base_map: dict[str, str] = field(default_factory=dict)
    # adapter rank over the whole registry list; on a base model an adapter does not apply to,
    # the same rank picks among the adapters that do
    lora_map: dict[str, str] = field(default_factory=dict)
    controlnet_map: dict[str, str] = field(default_factory=dict)
    trimmed: Counter = field(default_factory=Counter)  # reason -> adapters/fields dropped
    requests_trimmed: int = 0
    default_base_requests: int = 0

    def summary(self) -> dict:
        return {"requests_trimmed": self.requests_trimmed, "trimmed": dict(self.trimmed),
                "default_base_requests": self.default_base_requests,
                "distinct": {"base_models": len(set(self.base_map.values())),
                             "loras": len(set(self.lora_map.values())),
                             "controlnets": len(set(self.controlnet_map.values()))}}


def _ranks(codes: np.ndarray) -> dict[int, int]:
    """Trace id code -> popularity rank in ``codes`` (most requested first; ties: first seen)."""
    valid = codes[codes >= 0]
    if valid.size == 0:
        return {}
    ids, first, counts = np.unique(valid, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    return {int(ids[i]): r for r, i in enumerate(order)}


def map_requests(table: RequestTable, registry: Registry, *, steps: str = "model-default",
                 seed: int = 0) -> tuple[list[ReplayRequest], MappingReport]:
    """Map every row of ``table`` (in time order) onto ``registry``.

    ``steps``: 'model-default' sends each base model's default steps (a trace's step counts
    were measured on real GPUs and would swamp tiny CPU models); 'trace' sends the trace's
    count where it has one, clamped to the service's maximum.
    """
    if steps not in ("model-default", "trace"):
        raise ValueError(f"steps must be 'model-default' or 'trace', got {steps!r}")
    t = table.sorted_by_time()
    report = MappingReport()
    base_rank = _ranks(t.base_model)
    kinds = t.adapter_kind
    lora_rank = _ranks(np.where(kinds == LORA, t.adapter_id, -1))
    cn_rank = _ranks(np.where(kinds == CONTROLNET, t.adapter_id, -1))
    t0 = float(t.time[0]) if len(t) else 0.0
    out: list[ReplayRequest] = []
    for i in range(len(t)):
        trimmed_before = sum(report.trimmed.values())
        code = int(t.base_model[i])
        if code < 0:
            base = registry.default_base
            report.default_base_requests += 1
        else:
            base = registry.bases[base_rank[code] % len(registry.bases)]
            report.base_map[t.base_models[code]] = base
        loras: list[tuple[str, float]] = []
        nets: list[str] = []
        for j in range(int(t.adapter_offsets[i]), int(t.adapter_offsets[i + 1])):
            kind, a = int(kinds[j]), int(t.adapter_id[j])
            is_lora = kind == LORA
            name = (t.lora_ids if is_lora else t.controlnet_ids)[a]
            pool = registry.applicable("lora" if is_lora else "controlnet", base)
            label = "lora" if is_lora else "controlnet"
            if not pool:
                report.trimmed[f"{label}_not_applicable"] += 1
                continue
            rank = (lora_rank if is_lora else cn_rank)[a]
            mapped = pool[rank % len(pool)]
            every = registry.loras if is_lora else registry.controlnets
            (report.lora_map if is_lora else report.controlnet_map)[name] = every[rank % len(every)]
            held = [x for x, _ in loras] if is_lora else nets
            limit = registry.max_loras if is_lora else registry.max_controlnets
            if mapped in held:
                report.trimmed[f"{label}_duplicate_after_mapping"] += 1
            elif len(held) >= limit:
                report.trimmed[f"{label}_over_limit"] += 1
            elif is_lora:
                scale = float(t.adapter_scale[j])
                loras.append((mapped, round(min(max(scale, -4.0), 4.0), 4) if np.isfinite(scale) else 1.0))
            else:
                nets.append(mapped)
        n = int(t.images[i]) if t.images[i] > 0 else 1
        if n > registry.max_images:
            report.trimmed["images_over_limit"] += 1
            n = registry.max_images
        k = registry.default_steps.get(base, 25)
        if steps == "trace" and t.steps[i] > 0:
            k = int(t.steps[i])
        if k > registry.max_steps:
            report.trimmed["steps_over_limit"] += 1
            k = registry.max_steps
        if sum(report.trimmed.values()) > trimmed_before:
            report.requests_trimmed += 1
        out.append(ReplayRequest(i, float(t.time[i]) - t0, base, tuple(loras), tuple(nets), k, n,
                                 seed + i))
    return out, report


def to_table(requests: list[ReplayRequest], registry: Registry) -> RequestTable:
    """The mapped requests as a RequestTable in registry ids (what the simulator replays for
    parity: the same slice, the same models, the same steps and images as the live run)."""
    bases = list(registry.bases)
    loras, nets = list(registry.loras), list(registry.controlnets)
    offsets = np.zeros(len(requests) + 1, np.int64)
    kind, ids, scale = [], [], []
    for i, r in enumerate(requests):
        for c in r.controlnets:
            kind.append(CONTROLNET), ids.append(nets.index(c)), scale.append(np.nan)
        for a, s in r.loras:
            kind.append(LORA), ids.append(loras.index(a)), scale.append(s)
        offsets[i + 1] = len(kind)
    return build_table(
        len(requests), time=np.array([r.time_s for r in requests], np.float64),
        base_model=np.array([bases.index(r.base_model) for r in requests], np.int32),
        steps=np.array([r.steps for r in requests], np.int32),
        images=np.array([r.n for r in requests], np.int32),
        adapter_offsets=offsets, adapter_kind=np.array(kind, np.int8),
        adapter_id=np.array(ids, np.int32), adapter_scale=np.array(scale, np.float32),
        base_models=bases, controlnet_ids=nets, lora_ids=loras, format="replay-mapped",
    )
