"""What does a LoRA cost a request: the hotswap slots computing it, or the adapters merged in?

Two PipelineEngines that differ only in `cache.lora_mode`, each with its own copy of the same
pipeline (a pipeline carries either hotswap slots or a LoRA bank), on the same adapters:
- slots: every slot active (the request's at its scale, the others at 0) computes its LoRA branch
  on every attention projection;
- merge: the request's adapters are added into the attention weights before inference (merge_ms)
  and copied back from the pristine copies (restore_ms) when a later request wants other ones;
  LoRA compute stays off. The cases rotate, so every timed merge request pays both.
Requests: base (no LoRA), 1 LoRA, 3 LoRAs at different scales. The adapters are swapped into the
slots during the warm-up, so the timed requests measure compute, not swaps. Each round runs every
(mode, case) once, in an order rotated per round; medians over the rounds, and ratios to the base
request of the same mode (the median of the per-round ratios). merge vs slots images are compared
per case (uint8 levels).

CPU: the tiny demo models, one torch thread (what a BaseModel replica gets). With a CUDA device,
also real-size SD 1.5 (random weights built from the published config, float16, 512x512, 25
steps, rank-64 LoRAs on the 128 attention projections), timed with torch.cuda.synchronize().
Run: python -m benchmarks.lora_overhead [--rounds 12] [--size 64] [--steps 4]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # also runnable as `python benchmarks/lora_overhead.py`
    sys.path.insert(0, str(REPO))

from benchmarks._common import RESULTS, git, machine_info, write_result  # noqa: E402

DEFAULT_CONFIG = REPO / "app" / "configs" / "default.yaml"
TINY_BASE = "tiny-sd-light"
TINY_CASES = {"base": (), "1 lora": (("tiny-lora-noir", 0.8),),
              "3 loras": (("tiny-lora-noir", 0.8), ("tiny-lora-clay", -0.5), ("tiny-lora-film", 1.2))}
MODES = ("slots", "merge")
# Real-size SD 1.5 (the published configs; CLIP-L's shape on the demo byte vocabulary)
SD15_UNET = dict(cross_attention_dim=768, sample_size=64)  # diffusers' defaults are SD 1.5's
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                sample_size=512)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 hidden_act="quick_gelu")
SD15_SPEC = dict(prompt="a lighthouse at dusk", width=512, height=512, steps=25, guidance_scale=7.5,
                 seed=11)
SD15_LORA_RANK = 64


def machine() -> dict:
    import diffusers, peft, torch  # noqa: E401

    return machine_info(
        torch=torch.__version__, peft=peft.__version__, diffusers=diffusers.__version__,
        cuda=torch.cuda.is_available(), torch_threads=torch.get_num_threads(),
        git_dirty=git("status", "--porcelain", "--", "deployments").splitlines())


def engines(config, device: str) -> dict:
    from deployments.pipeline_engine import PipelineEngine

    out = {}
    for mode in MODES:
        cache = config.cache.model_copy(update={"lora_mode": mode})
        out[mode] = PipelineEngine(config.model_copy(update={"cache": cache}), device=device)
    return out


def measure(config, base: str, cases: dict, weights: dict, spec_args: dict, rounds: int,
            device: str) -> dict:
    """Median inference / request / merge / restore times per (mode, case), and their ratios."""
    import torch

    from deployments.spec import GenerationSpec

    by_mode = engines(config, device)
    loaded = {mode: engine.load_pipeline(base) for mode, engine in by_mode.items()}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    runs = [(mode, case) for mode in MODES for case in cases]
    times = {run: {"inference": [], "request": [], "merge": [], "restore": []} for run in runs}
    images = {}
    for r in range(-2, rounds):  # two warm-up rounds: kernels, and every adapter into a slot
        order = runs[r % len(runs):] + runs[: r % len(runs)]
        for mode, case in order:
            spec = GenerationSpec(base_model=base, loras=cases[case], **spec_args)
            sync()
            started = time.perf_counter()
            result = by_mode[mode].generate(loaded[mode], spec, weights)
            sync()
            request = time.perf_counter() - started
            images[(mode, case)] = result.images[0]
            if r < 0:
                continue
            row = times[(mode, case)]
            row["inference"].append(result.timings["inference_s"])
            row["request"].append(request)
            if mode == "merge" and cases[case]:  # merge and restore alone, synchronised
                bank = loaded[mode].slots
                bank.restore()
                sync()
                t0 = time.perf_counter()
                bank.merge(list(cases[case]))
                sync()
                t1 = time.perf_counter()
                bank.restore()
                sync()
                row["merge"].append(t1 - t0)
                row["restore"].append(time.perf_counter() - t1)
            if result.adapters_swapped:
                raise RuntimeError(f"{mode}/{case}: a timed request swapped adapters; the slots "
                                   "must hold every benchmark adapter")
    med = {run: {k: float(np.median(v)) * 1000.0 if v else None for k, v in t.items()}
           for run, t in times.items()}

    def paired(mode: str, case: str, key: str) -> float:
        """Median over rounds of case / base within the round: drift on a shared machine
        cancels (both ran a few seconds apart)."""
        return float(np.median(np.divide(times[(mode, case)][key], times[(mode, "base")][key])))

    rows = []
    for mode, case in runs:
        m = med[(mode, case)]
        diff = np.abs(images[(mode, case)].astype(np.int16) - images[("slots", case)].astype(np.int16))
        rows.append({"mode": mode, "case": case, "loras": [list(x) for x in cases[case]],
                     "inference_ms": round(m["inference"], 2),
                     "inference_ratio": round(paired(mode, case, "inference"), 3),
                     "request_ms": round(m["request"], 2),
                     "request_ratio": round(paired(mode, case, "request"), 3),
                     "merge_ms": None if m["merge"] is None else round(m["merge"], 3),
                     "restore_ms": None if m["restore"] is None else round(m["restore"], 3),
                     "max_abs_diff_vs_slots_levels": int(diff.max())})
    base_image = images[("merge", "base")]
    assert np.array_equal(base_image, images[("slots", "base")]), "base images must not depend on mode"
    return {"base_model": base, "rounds": rounds, "spec": spec_args, "rows": rows}


# -- the two machines ---------------------------------------------------------------------------
def tiny(args) -> dict:
    from deployments.config import load_config
    from deployments.lora_store import read_lora_file

    models = args.models
    if not models:
        from app.demo_models import build_demo_models

        models = tempfile.mkdtemp(prefix="t2i-bench-models-")
        atexit.register(shutil.rmtree, models, ignore_errors=True)
        build_demo_models(models, seed=0, progress=False)
    config = load_config(DEFAULT_CONFIG, {"model_root": models})
    ids = {a for loras in TINY_CASES.values() for a, _ in loras}
    weights = {a: read_lora_file(a, config.resolve_source(config.entry(a)), config.cache.lora_max_rank)
               for a in ids}
    spec = dict(prompt="a lighthouse at dusk", width=args.size, height=args.size, steps=args.steps,
                guidance_scale=5.0, seed=11)
    return measure(config, TINY_BASE, TINY_CASES, weights, spec, args.rounds, "cpu")


def real_sd15(args, device: str = "cuda") -> dict:
    """Real-size SD 1.5 with random weights (build_sd15), loaded through the engine's loader."""
    config, weights = build_sd15(device)
    cases = {"base": (), "1 lora": (("sd15-lora-a", 0.8),),
             "3 loras": (("sd15-lora-a", 0.8), ("sd15-lora-b", -0.5), ("sd15-lora-c", 1.2))}
    return measure(config, "sd15-random", cases, weights, SD15_SPEC, args.gpu_rounds, device)


def build_sd15(device: str = "cuda", loras: int = 3) -> tuple:
    """Real-size SD 1.5 with random weights, built on the device and saved (float16) to a temp
    folder, and `loras` rank-64 LoRAs (sd15-lora-a, -b, ...) written by the demo LoRA writer;
    (config naming them, {lora id: prepared adapter} as the LoRA store reads them)."""
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from app.demo_models import LoraSpec, _tokenizer, _write_tokenizer, build_lora
    from deployments.config import ModelEntry, load_config
    from deployments.lora_store import read_lora_file

    root = Path(tempfile.mkdtemp(prefix="t2i-bench-sd15-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    _write_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **SD15_TEXT, vocab_size=520, bos_token_id=512, eos_token_id=513, pad_token_id=513,
            max_position_embeddings=77))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder,
                                   tokenizer=_tokenizer(root / "tokenizer"), scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).to(torch.float16)
    pipe.save_pretrained(str(root / "sd15"), safe_serialization=True)
    unet_cpu = pipe.unet.to("cpu", torch.float32)
    entries = [ModelEntry(id="sd15-random", kind="base", path=str(root / "sd15"), dtype="float16")]
    for i, name in enumerate(f"sd15-lora-{chr(ord('a') + k)}" for k in range(loras)):
        build_lora(root / name, LoraSpec(name, SD15_LORA_RANK, SD15_LORA_RANK,
                                         ("to_q", "to_k", "to_v", "to_out.0"), i), unet_cpu, seed=1)
        entries.append(ModelEntry(id=name, kind="lora", path=str(root / name)))
    del pipe, unet_cpu
    config = load_config(DEFAULT_CONFIG, {"model_root": str(root)})
    config = config.model_copy(update={"models": entries, "cache": config.cache.model_copy(
        update={"lora_max_rank": SD15_LORA_RANK})})
    weights = {e.id: read_lora_file(e.id, e.path, SD15_LORA_RANK) for e in entries if e.kind == "lora"}
    return config, weights


# -- report -------------------------------------------------------------------------------------
def print_table(title: str, part: dict) -> None:
    s = part["spec"]
    print(f"\n{title}: {part['base_model']} {s['width']}x{s['height']}, {s['steps']} steps, "
          f"medians of {part['rounds']} rounds; x base: median of per-round ratios")
    print(f"{'mode':<6} {'case':<8} {'infer ms':>9} {'x base':>7} {'request ms':>11} {'x base':>7} "
          f"{'merge ms':>9} {'restore ms':>11} {'vs slots':>9}")
    for row in part["rows"]:
        merge = "" if row["merge_ms"] is None else f"{row['merge_ms']:.3f}"
        restore = "" if row["restore_ms"] is None else f"{row['restore_ms']:.3f}"
        print(f"{row['mode']:<6} {row['case']:<8} {row['inference_ms']:>9.1f} "
              f"{row['inference_ratio']:>7.3f} {row['request_ms']:>11.1f} {row['request_ratio']:>7.3f} "
              f"{merge:>9} {restore:>11} {row['max_abs_diff_vs_slots_levels']:>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--rounds", type=int, default=16, help="timed rounds on the tiny models")
    add("--gpu-rounds", type=int, default=5, help="timed rounds on real-size SD 1.5 (GPU only)")
    add("--size", type=int, default=64, choices=[32, 64, 128])
    add("--steps", type=int, default=4)
    add("--models", help="demo models folder (default: build into a temp dir)")
    add("--out", default=str(RESULTS / "lora_overhead_cpu.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)  # what a BaseModel replica gets (1 CPU under Ray)
    started = time.time()
    result: dict = {"benchmark": "lora_overhead", "machine": machine(),
                    "params": {k: v for k, v in vars(args).items() if k not in ("out", "models")}}
    result["cpu_tiny"] = tiny(args)
    print_table("CPU, tiny models", result["cpu_tiny"])
    if torch.cuda.is_available():
        result["gpu_sd15"] = real_sd15(args)
        result["gpu_sd15"]["device"] = torch.cuda.get_device_name()
        print_table(f"GPU ({result['gpu_sd15']['device']}), real-size SD 1.5, float16",
                    result["gpu_sd15"])
    else:
        result["gpu_sd15"] = "no GPU: GPU rows skipped"
        print("\nno GPU: GPU rows skipped")
    result["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    result["wall_s"] = round(time.time() - started, 1)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
