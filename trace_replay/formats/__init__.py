"""Trace formats by command-line name; every request format loads into a RequestTable."""

from __future__ import annotations

from pathlib import Path

from trace_replay.table import RequestTable

FORMATS: dict[str, str] = {
    "katz": "SwiftDiffusion/Katz diffusion_model_request_trace.json: JSON array of {timestamp (s), "
            "ip, scene_id (service A|B), base_model_id|null, controlnets [id]|null, loras [id|null]|null}; "
            "instance = (scene_id, ip). Also what `t2i trace synth` writes.",
    "gentd26-requests": "GenTD26 lora_request_trace.csv: gmt_create timestamps, groupId (tenant), task, "
                        "status, exec seconds, steps, images, base model, LoRA count (no LoRA ids).",
    "gentd26-processed": "GenTD26 data_trace_processed.csv: base model, lora_args (ids + scales), exec "
                         "seconds, steps, images; row order only, arrivals drawn by a seeded Poisson "
                         "process shaped like qps.csv (--arrival, --seed, --mean-qps).",
    "diffserve": "DiffServe traces/maf/**/*.txt: '<arrival_ms>,<prompt_index>' per line.",
}


def load_trace(path: str | Path, fmt: str, lenient: bool = False, **options: object) -> RequestTable:
    """Load ``path`` in format ``fmt`` (a key of FORMATS). Options go to the format's loader."""
    if fmt == "katz":
        from trace_replay.formats.katz import load_katz

        return load_katz(path, lenient)
    if fmt == "gentd26-requests":
        from trace_replay.formats.gentd26 import load_requests

        return load_requests(path, lenient)
    if fmt == "gentd26-processed":
        from trace_replay.formats.gentd26 import load_processed

        return load_processed(path, lenient, **options)  # type: ignore[arg-type]
    if fmt == "diffserve":
        from trace_replay.formats.diffserve import load_arrivals

        return load_arrivals(path, lenient)
    raise ValueError(f"unknown trace format {fmt!r}; formats: {', '.join(FORMATS)}")
