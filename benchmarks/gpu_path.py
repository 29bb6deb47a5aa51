"""The engine's GPU path, measured against the path it replaced, in the same run.

Issue 14's figures, each next to its baseline:
- loads: a warm (page-cached) pipeline load through the engine (deployments/direct_load.py, a LoRA
  bank set up) against the previous path (diffusers' `from_pretrained` on the host,
  `pipe.to(device)`, three zero-adapter hotswap slots built through `load_lora_weights`), against
  diffusers' loader straight onto the device, and against the raw warm read rate of the same files
  (one thread reading them; `safetensors.load_file` onto the device shown too);
- LoRA set-up: the bank's (pristine copies) against the hotswap slots';
- host tier (GPU only): the model cache's demotion to pinned host memory and reload, against
  `pipe.to("cpu")` / `pipe.to(device)` (pageable) and against a raw pinned host-to-device copy of
  the same byte count;
- switch: a request whose adapter is not on the device, cycling through twice as many adapters
  as the pipeline holds: the bank's copy + unmerge + merge against the slots' peft hotswap; and a
  hot pair (same adapter again) under merge;
- LoRA overhead: requests with 0, 1 and 3 LoRAs in both modes (benchmarks/lora_overhead.py).

On a CPU: the tiny demo models, one torch thread (host-tier rows skipped: a CPU replica keeps its
models where they are). With CUDA: also real-size SD 1.5 (random weights from the published
configs, float16, 512x512, 25 steps, rank-64 LoRAs). Medians; every GPU timing synchronised.
Run: python -m benchmarks.gpu_path [--repeats 3] [--rounds 5] [--skip-cpu]
Writes benchmarks/results/gpu_path_cpu.json, or gpu_path_<device>.json when a GPU is there.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import RESULTS, write_result  # noqa: E402
from benchmarks.lora_overhead import (DEFAULT_CONFIG, SD15_SPEC, TINY_BASE, TINY_CASES,  # noqa: E402
                                      build_sd15, machine, measure)

TINY_SPEC = dict(prompt="a lighthouse at dusk", width=64, height=64, steps=4, guidance_scale=5.0, seed=11)


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def _timed(fn, device: str) -> tuple[float, object]:
    sync = _sync(device)
    sync()
    started = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - started, out


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _engine(config, mode: str, device: str):
    from deployments.pipeline_engine import PipelineEngine

    cache = config.cache.model_copy(update={"lora_mode": mode})
    return PipelineEngine(config.model_copy(update={"cache": cache}), device=device)


# -- loads ------------------------------------------------------------------------------------
def loads(config, base: str, device: str, repeats: int) -> dict:
    """Warm loads: raw read, safetensors onto the device, the previous engine path, the engine."""
    import safetensors.torch
    import torch
    from diffusers import StableDiffusionPipeline

    from deployments.lora_bank import LoraBank
    from deployments.lora_slots import LoraSlots

    entry = config.entry(base)
    root = Path(config.resolve_source(entry))
    files = sorted(root.rglob("*.safetensors"))
    nbytes = sum(f.stat().st_size for f in files)
    cache = config.cache
    dtype = {"float16": torch.float16, "float32": torch.float32}[entry.dtype]
    engine = _engine(config, "merge", device)
    engine.warm_up()

    def raw_read():
        for f in files:
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass

    def previous():  # the engine's load before this change: host read, copy, zero-adapter slots
        pipe = StableDiffusionPipeline.from_pretrained(str(root), torch_dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.to(device)
        _sync(device)()
        t = time.perf_counter()
        LoraSlots(pipe, cache.lora_slots, cache.lora_max_rank)
        _sync(device)()
        return pipe, time.perf_counter() - t

    def diffusers_direct():  # diffusers' loader straight onto the device, no LoRA set-up
        return StableDiffusionPipeline.from_pretrained(
            str(root), torch_dtype=dtype, safety_checker=None, requires_safety_checker=False,
            device_map=device if device == "cuda" else None).to(device)

    raw_read()  # warm the page cache
    loaders: set[str] = set()
    rows: dict[str, list[float]] = {k: [] for k in ("raw_read", "safetensors_to_device", "previous_load",
                                                    "previous_slots", "engine_load", "diffusers_device_map",
                                                    "bank_setup")}
    for _ in range(repeats):
        rows["raw_read"].append(_timed(raw_read, device)[0])
        seconds, tensors = _timed(lambda: [safetensors.torch.load_file(f, device=device) for f in files], device)
        rows["safetensors_to_device"].append(seconds)
        del tensors
        _free(device)
        seconds, (pipe, slots_s) = _timed(previous, device)
        rows["previous_load"].append(seconds)
        rows["previous_slots"].append(slots_s)
        del pipe
        _free(device)
        seconds, loaded = _timed(lambda: engine.load_pipeline(base), device)
        rows["engine_load"].append(seconds)
        loaders.add(loaded.loader)
        loaded._free()
        del loaded
        _free(device)
        seconds, pipe = _timed(diffusers_direct, device)
        rows["diffusers_device_map"].append(seconds)
        rows["bank_setup"].append(_timed(lambda: LoraBank(pipe.unet, cache.lora_slots, cache.lora_max_rank),
                                         device)[0])
        del pipe
        _free(device)
    med = {k: float(np.median(v)) for k, v in rows.items()}
    gbps = {k: nbytes / med[k] / 1e9 for k in ("raw_read", "safetensors_to_device", "previous_load",
                                               "engine_load", "diffusers_device_map")}
    return {"base_model": base, "bytes": nbytes, "repeats": repeats, "engine_loader": sorted(loaders),
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "gbps": {k: round(v, 3) for k, v in gbps.items()},
            "engine_load_vs_raw_read": round(gbps["engine_load"] / gbps["raw_read"], 3),
            "previous_load_vs_raw_read": round(gbps["previous_load"] / gbps["raw_read"], 3),
            "engine_vs_previous_load_speedup": round(med["previous_load"] / med["engine_load"], 2),
            "lora_setup_ms": {"slots (previous)": round(med["previous_slots"] * 1e3, 2),
                              "bank (merge)": round(med["bank_setup"] * 1e3, 2)}}


# -- host tier --------------------------------------------------------------------------------
def host_tier(config, base: str, device: str, repeats: int) -> dict:
    """Demote to host memory and reload: the model cache's pinned moves against `pipe.to`, and
    against a raw pinned copy of the same bytes. The image must survive the round trip."""
    import torch

    from deployments.pinned_moves import is_pinned
    from deployments.pipeline_engine import EngineModels, _modules
    from deployments.spec import GenerationSpec

    engine = _engine(config, "merge", device)
    source = EngineModels(engine)
    loaded = engine.load_pipeline(base)
    nbytes = source.size_of(loaded) - loaded.slots.reserved_bytes()
    spec = GenerationSpec(base_model=base, **{**SD15_SPEC, "steps": 4})
    before = engine.generate(loaded, spec).images[0]
    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    pageable = torch.empty(nbytes, dtype=torch.uint8)
    rows: dict[str, list[float]] = {k: [] for k in ("pinned_copy", "pageable_copy", "tier_demote",
                                                    "tier_reload", "pipe_to_host", "pipe_to_device")}
    pinned_after_demote = []
    for _ in range(repeats):
        rows["pinned_copy"].append(_timed(lambda: pinned.to(device, non_blocking=True), device)[0])
        rows["pageable_copy"].append(_timed(lambda: pageable.to(device), device)[0])
        _free(device)
        rows["tier_demote"].append(_timed(lambda: source.to_host(loaded), device)[0])
        pinned_after_demote.append(is_pinned(_modules(loaded)))
        rows["tier_reload"].append(_timed(lambda: source.to_device(loaded), device)[0])
        rows["pipe_to_host"].append(_timed(lambda: loaded.pipe.to("cpu"), device)[0])
        _free(device)
        rows["pipe_to_device"].append(_timed(lambda: loaded.pipe.to(device), device)[0])
    after = engine.generate(loaded, spec).images[0]
    med = {k: float(np.median(v)) for k, v in rows.items()}
    gbps = {k: round(nbytes / v / 1e9, 2) for k, v in med.items()}
    return {"base_model": base, "bytes": nbytes, "repeats": repeats,
            "median_s": {k: round(v, 4) for k, v in med.items()}, "gbps": gbps,
            "tier_reload_vs_pinned_copy": round(med["pinned_copy"] / med["tier_reload"], 3),
            "tier_reload_speedup_vs_pipe_to": round(med["pipe_to_device"] / med["tier_reload"], 2),
            "host_copies_pinned": all(pinned_after_demote),
            "image_identical_after_round_trips": bool(np.array_equal(before, after))}


# -- switch -----------------------------------------------------------------------------------
def switches(config, base: str, adapters: list[str], weights: dict, device: str, n: int) -> dict:
    """A request's adapter change when it is not on the device (more adapters than places, in a
    cycle), timed alone and synchronised: merge (copy + unmerge + merge) against slots (peft
    hotswap into the least recently used slot + scales); and the same adapter again (a hot pair).
    On a GPU both also with the adapters in pinned host memory, as a replica keeps them."""
    from deployments.lora_format import pin_adapter

    runs = {"slots": ("slots", weights), "merge": ("merge", weights)}
    if device.startswith("cuda"):
        pinned = {a: pin_adapter(w) for a, w in weights.items()}
        runs.update({"slots, pinned adapters": ("slots", pinned), "merge, pinned adapters": ("merge", pinned)})
    out = {}
    for label, (mode, prepared) in runs.items():
        engine = _engine(config, mode, device)
        loaded = engine.load_pipeline(base)
        holder = loaded.slots
        times, hot = [], []
        for i in range(-len(adapters), n):  # one cycle of warm-up
            loras = [(adapters[i % len(adapters)], 0.8)]
            wanted = {a: prepared[a] for a in holder.missing([a for a, _ in loras])}
            if mode == "merge":
                seconds, swapped = _timed(lambda: (holder.stage(loras, wanted), holder.merge(loras))[0], device)
                hot_s = _timed(lambda: (holder.stage(loras, {}), holder.merge(loras)), device)[0]
            else:
                seconds, swapped = _timed(lambda: holder.activate(loras, wanted), device)
                hot_s = _timed(lambda: holder.activate(loras, {}), device)[0]
            if i >= 0:
                if swapped != 1:
                    raise RuntimeError(f"{label}: switch {i} moved {swapped} adapters, expected 1")
                times.append(seconds)
                hot.append(hot_s)
        out[label] = {"switch_ms": round(float(np.median(times)) * 1e3, 3),
                      "switch_p90_ms": round(float(np.percentile(times, 90)) * 1e3, 3),
                      "same_adapter_again_ms": round(float(np.median(hot)) * 1e3, 3)}
        loaded._free()
        _free(device)
    out["switches"] = n
    out["adapters_cycled"] = len(adapters)
    return out


# -- one machine ------------------------------------------------------------------------------
ONLY: set[str] = set()  # --only: the parts to run (all when empty)


def _section(result: dict, name: str, fn) -> None:
    """Run one part; a failure is recorded and the other parts still run."""
    if ONLY and name not in ONLY:
        return
    started = time.time()
    try:
        result[name] = fn()
    except Exception as exc:  # noqa: BLE001  (recorded in the result, printed)
        traceback.print_exc()
        result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"[{name}: {time.time() - started:.1f} s]", flush=True)


def run_tiny(args) -> dict:
    from deployments.config import load_config
    from deployments.lora_store import read_lora_file

    models = tempfile.mkdtemp(prefix="t2i-bench-models-")
    atexit.register(shutil.rmtree, models, ignore_errors=True)
    from app.demo_models import build_demo_models

    build_demo_models(models, seed=0, progress=False)
    config = load_config(DEFAULT_CONFIG, {"model_root": models})
    lora_ids = [m.id for m in config.models if m.kind == "lora"][: 2 * config.cache.lora_slots]
    wanted = set(lora_ids) | {a for loras in TINY_CASES.values() for a, _ in loras}
    weights = {a: read_lora_file(a, config.resolve_source(config.entry(a)), config.cache.lora_max_rank)
               for a in wanted}
    out: dict = {"device": "cpu"}
    _section(out, "loads", lambda: loads(config, TINY_BASE, "cpu", args.repeats))
    _section(out, "switch", lambda: switches(config, TINY_BASE, lora_ids, weights, "cpu", args.switches))
    _section(out, "lora_overhead", lambda: measure(config, TINY_BASE, TINY_CASES, weights, TINY_SPEC,
                                                   args.cpu_rounds, "cpu"))
    return out


def run_sd15(args) -> dict:
    import torch

    device = "cuda"
    out: dict = {"device": torch.cuda.get_device_name()}
    config, weights = build_sd15(device, loras=2 * 3)
    base, ids = "sd15-random", sorted(weights)
    _section(out, "loads", lambda: loads(config, base, device, args.repeats))
    _section(out, "host_tier", lambda: host_tier(config, base, device, args.repeats))
    _section(out, "switch", lambda: switches(config, base, ids, weights, device, args.switches))
    cases = {"base": (), "1 lora": ((ids[0], 0.8),),
             "3 loras": ((ids[0], 0.8), (ids[1], -0.5), (ids[2], 1.2))}
    _section(out, "lora_overhead", lambda: measure(config, base, cases, weights, SD15_SPEC, args.rounds, device))
    return out


def print_part(title: str, part: dict) -> None:
    print(f"\n== {title}")
    for name in ("loads", "host_tier", "switch"):
        section = part.get(name)
        if section is None:
            continue
        print(f"-- {name}")
        for key, value in section.items():
            print(f"   {key}: {value}")
    overhead = part.get("lora_overhead")
    if overhead and "rows" in overhead:
        from benchmarks.lora_overhead import print_table

        print_table("-- lora_overhead", overhead)
    elif overhead:
        print(f"-- lora_overhead: {overhead}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--repeats", type=int, default=3, help="timed repeats of every load and host-tier move")
    add("--switches", type=int, default=12, help="timed adapter switches per mode")
    add("--rounds", type=int, default=5, help="LoRA-overhead rounds on real-size SD 1.5 (GPU)")
    add("--cpu-rounds", type=int, default=8, help="LoRA-overhead rounds on the tiny models")
    add("--skip-cpu", action="store_true", help="only the GPU part (when a GPU is there)")
    add("--only", nargs="+", choices=["loads", "host_tier", "switch", "lora_overhead"], default=[],
        help="run only these parts")
    add("--out", help="result file (default: results/gpu_path_<cpu|device>.json)")
    args = parser.parse_args(argv)
    ONLY.update(args.only)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    started = time.time()
    gpu = torch.cuda.is_available()
    result: dict = {"benchmark": "gpu_path", "machine": machine(),
                    "params": {k: v for k, v in vars(args).items() if k != "out"}}
    if not (gpu and args.skip_cpu):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what a BaseModel replica gets (1 CPU under Ray)
        result["cpu_tiny"] = run_tiny(args)
        torch.set_num_threads(threads)
        print_part("CPU, tiny demo models, 1 thread", result["cpu_tiny"])
    if gpu:
        result["gpu_sd15"] = run_sd15(args)
        print_part(f"GPU ({result['gpu_sd15']['device']}), real-size SD 1.5, float16", result["gpu_sd15"])
    else:
        result["gpu_sd15"] = "skipped: no CUDA device on this machine"
        print("\nno GPU: the GPU part (real-size SD 1.5, host tier) skipped")
    result["wall_s"] = round(time.time() - started, 1)
    name = f"gpu_path_{result['gpu_sd15']['device'].split()[-1].lower()}.json" if gpu else "gpu_path_cpu.json"
    write_result(args.out or str(RESULTS / name), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
