"""Builds the embedded default: tiny random-weight models in real diffusers layouts.

Everything is deterministic by seed and built from configs (the way diffusers' own tests build
tiny components), then saved with `save_pretrained`, so the service loads them back through the
exact code path it uses for real checkpoints. Nothing is downloaded.

Layout under OUT (the default set's ids match app/configs/default.yaml):
  base/tiny-sd-light, base/tiny-sd-heavy     StableDiffusionPipeline folders
  controlnet/tiny-cn-canny, .../tiny-cn-edges ControlNetModel folders
  lora/<id>/pytorch_lora_weights.safetensors  diffusers/peft-format UNet LoRAs of several ranks
  discriminator/tiny-disc/                    config.json + model.safetensors
  manifest.json                               what was built, with seeds and sizes
  config.yaml                                 a t2i config serving exactly these models

`bases`, `loras` and `controlnets` above the defaults (2, 8, 2) add tiny-sd-b00.., tiny-lora-000..
and tiny-cn-00.. with the same UNet block structure, so every LoRA and ControlNet applies to every
base: many small models let a trace replay on one machine exercise the caches.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

LIGHT_ID = "tiny-sd-light"
HEAVY_ID = "tiny-sd-heavy"
CONTROLNET_IDS = ("tiny-cn-canny", "tiny-cn-edges")
DISCRIMINATOR_ID = "tiny-disc"
SDXL_ID = "tiny-sdxl"


@dataclass(frozen=True)
class LoraSpec:
    id: str
    rank: int
    alpha: float
    # Which attention projections the adapter patches; several subsets so hotswap into the
    # pre-allocated slots is exercised with partial targets too.
    targets: tuple[str, ...]
    seed: int


LORA_SPECS: tuple[LoraSpec, ...] = tuple(
    LoraSpec(f"tiny-lora-{name}", rank, alpha, targets, 100 + index)
    # alpha != rank for some, as real LoRAs often have: the hotswap path must honour alpha/rank.
    for index, (name, rank, alpha, targets) in enumerate([
        ("ink", 1, 1, ("to_q", "to_k", "to_v", "to_out.0")),
        ("pastel", 2, 2, ("to_q", "to_v")),
        ("neon", 4, 8, ("to_q", "to_k", "to_v", "to_out.0")),
        ("sketch", 4, 4, ("to_k", "to_out.0")),
        ("film", 8, 4, ("to_q", "to_k", "to_v", "to_out.0")),
        ("pixel", 8, 8, ("to_q", "to_v")),
        ("clay", 16, 16, ("to_q", "to_k", "to_v", "to_out.0")),
        ("noir", 32, 16, ("to_q", "to_k", "to_v", "to_out.0")),
    ])
)


@dataclass(frozen=True)
class BaseSpec:
    id: str
    seed_offset: int
    transformer_layers: int
    default_steps: int


@dataclass(frozen=True)
class ControlNetSpec:
    id: str
    seed_offset: int
    preprocessor: str


NAMED_BASES = (BaseSpec(LIGHT_ID, 10, 1, 2), BaseSpec(HEAVY_ID, 20, 3, 4))
NAMED_CONTROLNETS = (ControlNetSpec(CONTROLNET_IDS[0], 30, "canny"),
                     ControlNetSpec(CONTROLNET_IDS[1], 31, "sobel"))
_EXTRA_TARGETS = (("to_q", "to_k", "to_v", "to_out.0"), ("to_q", "to_v"), ("to_k", "to_out.0"))
_EXTRA_RANKS = (1, 2, 4, 8, 16)


def base_specs(count: int) -> tuple[BaseSpec, ...]:
    """light, heavy, then tiny-sd-b00.. alternating 1 and 2 transformer layers per block (so the
    extra bases differ in service time too)."""
    extra = [BaseSpec(f"tiny-sd-b{i:02d}", 100 + 10 * i, 1 + i % 2, 2) for i in range(count - 2)]
    return (*NAMED_BASES[:count], *extra)


def lora_specs(count: int) -> tuple[LoraSpec, ...]:
    """The eight named LoRAs, then tiny-lora-000.. cycling ranks 1-16 and target subsets."""
    ranks = [_EXTRA_RANKS[i % len(_EXTRA_RANKS)] for i in range(count - len(LORA_SPECS))]
    # alpha != rank for every other one, as for the named set
    extra = [LoraSpec(f"tiny-lora-{i:03d}", rank, rank if i % 2 else max(1, rank // 2),
                      _EXTRA_TARGETS[i % len(_EXTRA_TARGETS)], 1000 + i)
             for i, rank in enumerate(ranks)]
    return (*LORA_SPECS[:count], *extra)


def controlnet_specs(count: int) -> tuple[ControlNetSpec, ...]:
    extra = [ControlNetSpec(f"tiny-cn-{i:02d}", 300 + i, ("canny", "sobel")[i % 2])
             for i in range(count - len(NAMED_CONTROLNETS))]
    return (*NAMED_CONTROLNETS[:count], *extra)


def _write_tokenizer(folder: Path) -> None:
    """A byte-level CLIP vocabulary with no merges: every byte is a token.

    transformers 5 ignores vocab/merges passed to the CLIPTokenizer constructor (see
    ENVIRONMENT.md), so the files are written to a folder and loaded with from_pretrained, which is
    also exactly what loading a real checkpoint does.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2/CLIP convention):
    printable Latin-1 bytes stand for themselves, the rest map to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def _unet(seed: int, transformer_layers: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    # Light and heavy share block structure and channels, so LoRAs and ControlNets built against
    # the light UNet's modules apply to both; heavy has more transformer layers per block.
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=16, transformer_layers_per_block=transformer_layers,
    )


def build_base_pipeline(out: Path, seed: int, transformer_layers: int, tokenizer_dir: Path) -> None:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = _unet(seed, transformer_layers)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=16,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32,
        intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=520, max_position_embeddings=77,
    ))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing",
        steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(tokenizer_dir),
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)


def build_sdxl_pipeline(out: Path, seed: int, tokenizer_dir: Path) -> None:
    """A tiny SDXL-class pipeline (two text encoders, text-time conditioning). Not part of the
    default demo set; tests and `--with-sdxl` use it to exercise the SDXL code paths."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    # cross_attention_dim = both encoders' hidden sizes; projection input = 6 time ids x 8 + 32.
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=16)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=16)
    text_config = CLIPTextConfig(
        bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=520,
        max_position_embeddings=77, projection_dim=32, hidden_act="gelu")
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="trailing", steps_offset=1)
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer(tokenizer_dir), tokenizer_2=_tokenizer(tokenizer_dir),
        scheduler=scheduler)
    pipe.save_pretrained(str(out), safe_serialization=True)


def build_controlnet(out: Path, light_unet_dir: Path, seed: int) -> None:
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(light_unet_dir))
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    # from_unet zero-initialises the zero-convs (as training starts); randomise them so the
    # ControlNet actually changes the image.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if "zero_conv" in name or "controlnet_down_blocks" in name or "controlnet_mid_block" in name \
                    or "conv_out" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    controlnet.save_pretrained(str(out), safe_serialization=True)


def attention_modules(unet) -> list[str]:
    """Names of the UNet's attention modules (".attn1"/".attn2"), in module order."""
    return [name for name, _ in unet.named_modules() if name.endswith((".attn1", ".attn2"))]


def build_lora(out_dir: Path, spec: LoraSpec, unet, seed: int) -> None:
    """A random UNet LoRA written by diffusers' own LoRA writer, with peft adapter metadata."""
    from diffusers import StableDiffusionPipeline

    generator = torch.Generator().manual_seed(seed * 1000 + spec.seed)
    state: dict[str, torch.Tensor] = {}
    modules = dict(unet.named_modules())
    targets = []
    for attn in attention_modules(unet):
        for target in spec.targets:
            layer = modules[f"{attn}.{target}"]
            fan_in, fan_out = layer.in_features, layer.out_features
            # Effective update is (alpha / rank) * B @ A; scale B so every adapter changes the
            # image by a similar, visible amount whatever its rank and alpha.
            a = torch.randn(spec.rank, fan_in, generator=generator) / fan_in ** 0.5
            b = torch.randn(fan_out, spec.rank, generator=generator) * (
                0.6 * spec.rank ** 0.5 / spec.alpha)
            state[f"{attn}.{target}.lora_A.weight"] = a.contiguous()
            state[f"{attn}.{target}.lora_B.weight"] = b.contiguous()
            targets.append(f"{attn}.{target}")
    StableDiffusionPipeline.save_lora_weights(
        str(out_dir), unet_lora_layers=state, safe_serialization=True,
        unet_lora_adapter_metadata={"r": spec.rank, "lora_alpha": spec.alpha,
                                    "target_modules": targets})


def build_discriminator(out: Path, seed: int) -> None:
    from deployments.discriminator_model import DiscriminatorConfig, ImageDiscriminator

    torch.manual_seed(seed)
    model = ImageDiscriminator(DiscriminatorConfig())
    model.save(out)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build_demo_models(out: str | Path, seed: int = 0, progress: bool = True,
                      with_sdxl: bool = False, bases: int = 2, loras: int = len(LORA_SPECS),
                      controlnets: int = len(CONTROLNET_IDS), replicas: int = 2) -> dict:
    """Build the demo models under `out`; returns the manifest (also written as manifest.json)
    and writes `out/config.yaml` serving them (`replicas` BaseModel replicas)."""
    from diffusers import UNet2DConditionModel
    from tqdm import tqdm

    if bases < 1 or loras < 0 or controlnets < 0:
        raise ValueError(f"need bases >= 1, loras >= 0, controlnets >= 0; got {bases}, {loras}, "
                         f"{controlnets}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer_dir = out / "_tokenizer"
    _write_tokenizer(tokenizer_dir)
    base_set, lora_set, cn_set = base_specs(bases), lora_specs(loras), controlnet_specs(controlnets)
    # LoRAs and ControlNets are built against the first base's UNet: every base shares its
    # block structure, so they apply to all of them.
    first_unet = out / "base" / base_set[0].id / "unet"
    steps = [(f"base {b.id}", lambda b=b: build_base_pipeline(
        out / "base" / b.id, seed + b.seed_offset, b.transformer_layers, tokenizer_dir))
        for b in base_set]
    steps += [(f"controlnet {c.id}", lambda c=c: build_controlnet(
        out / "controlnet" / c.id, first_unet, seed + c.seed_offset)) for c in cn_set]
    if lora_set:
        steps.append(("loras", lambda: _build_loras(out, lora_set, UNet2DConditionModel.from_pretrained(
            str(first_unet)), seed)))
    steps.append(("discriminator", lambda: build_discriminator(
        out / "discriminator" / DISCRIMINATOR_ID, seed + 40)))
    if with_sdxl:
        steps.append(("base " + SDXL_ID, lambda: build_sdxl_pipeline(
            out / "base" / SDXL_ID, seed + 50, tokenizer_dir)))
    for label, step in tqdm(steps, desc="demo models", disable=not progress, unit="model"):
        step()

    models = [{"id": b.id, "kind": "base", "path": f"base/{b.id}"} for b in base_set]
    models += [{"id": c.id, "kind": "controlnet", "path": f"controlnet/{c.id}"} for c in cn_set]
    models += [{"id": s.id, "kind": "lora", "path": f"lora/{s.id}", "rank": s.rank,
               "alpha": s.alpha}
               for s in lora_set]
    models.append({"id": DISCRIMINATOR_ID, "kind": "discriminator",
                   "path": f"discriminator/{DISCRIMINATOR_ID}"})
    if with_sdxl:
        models.append({"id": SDXL_ID, "kind": "base", "path": f"base/{SDXL_ID}", "arch": "sdxl"})
    for model in models:
        model["size_bytes"] = folder_bytes(out / model["path"])
    manifest = {"seed": seed, "build_seconds": round(time.perf_counter() - started, 2),
                "models": models}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    write_demo_config(out, manifest, base_set, cn_set, replicas)
    return manifest


def _build_loras(out: Path, specs: tuple[LoraSpec, ...], unet, seed: int) -> None:
    for spec in specs:
        build_lora(out / "lora" / spec.id, spec, unet, seed)



# The replicas of a many-replica demo share this machine's cores: each busy neighbour made a
# request 38-46% longer in `t2i profile` on the 2-core build machine (cluster.host_contention of
# the profiles it wrote). The router prices that (policies.routing host_contention); re-measure
# with `t2i profile` on another machine and set control.routing_args.host_contention.
DEMO_HOST_CONTENTION = 0.4
# A request waits up to this long behind a replica that holds its pipeline rather than load it on
# a less busy one (policies.routing slack_s). On this demo's replicas, which share two cores, moving
# a request buys little parallelism and each move pulls a pipeline in and pushes another out:
# benchmarks/live_coordinator.py (900 requests, SLO 2 s, three runs) measured 0.71-0.90x Ray's
# load-seconds and 0.72-0.93x its p99 with a slack of 0.5 s, against 1.28x and 0.84x without one
# (README: violations about equal). On dedicated GPUs
# (the simulator's coordinator set) no slack is the default: there it raised SLO violations.
DEMO_ROUTING_SLACK_S = 0.5

def demo_config(out: Path, manifest: dict, base_set: tuple[BaseSpec, ...],
                cn_set: tuple[ControlNetSpec, ...], replicas: int) -> dict:
    """A t2i config (app/configs/default.yaml's schema) serving the models in `manifest`.

    `replicas` BaseModel replicas share one CPU (num_cpus 1/replicas, so they fit on a 2-core
    machine beside the rest), each holding 2 pipelines: with more bases than that, routing and
    eviction matter. The LoRA store holds about half the LoRA bytes, so it evicts too.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    steps = {b.id: b.default_steps for b in base_set}
    preprocessor = {c.id: c.preprocessor for c in cn_set}
    sizes = ["64x64", "32x32", "128x128"]
    models = []
    for m in manifest["models"]:
        entry = {"id": m["id"], "kind": m["kind"], "path": m["path"]}
        if m["kind"] == "base":
            entry.update(sizes=sizes, default_steps=steps.get(m["id"], 2))
            if m.get("arch"):
                entry["arch"] = m["arch"]
        elif m["kind"] == "controlnet":
            entry["default_preprocessor"] = preprocessor[m["id"]]
        elif m["kind"] == "lora" and m.get("arch"):
            entry["arch"] = m["arch"]
        models.append(entry)
    lora_bytes = [m["size_bytes"] for m in manifest["models"] if m["kind"] == "lora"]
    store_bytes = 256 << 20  # as default.yaml: the named eight fit many times over
    if len(lora_bytes) > len(LORA_SPECS):
        store_bytes = max(sum(lora_bytes) // 2, 4 * max(lora_bytes))
    bases = [b.id for b in base_set]
    light, heavy = (bases[0], bases[1]) if len(bases) > 1 else (None, None)
    # The coordinator's replica cache gets the device bytes of what serve.multiplexed holds
    # (2 pipelines, 2 ControlNets: equal cost for a comparison), and twice that in host memory.
    largest = lambda kind: max([m["size_bytes"] for m in manifest["models"] if m["kind"] == kind] or [0])  # noqa: E731
    # rounded to 0.1 MB: safetensors metadata makes sizes wobble by bytes between builds
    gpu_budget = max(round(2 * largest("base") + 2 * largest("controlnet"), -5), 1 << 20)
    return {
        "host": "127.0.0.1", "port": 8000,
        "model_root": str(out.resolve()),
        "default_base_model": bases[0],
        "controlnet_mode": "colocated",
        "models": models,
        "deployments": {
            "ingress": {"num_replicas": 1, "max_ongoing_requests": 64},
            "base_model": {"num_replicas": replicas, "num_cpus": round(1.0 / replicas, 4),
                           "max_ongoing_requests": 8},
            "controlnet": {"num_replicas": 1, "max_ongoing_requests": 16},
            "lora_store": {"num_replicas": 1, "max_ongoing_requests": 64},
            "discriminator": {"num_replicas": 1, "max_ongoing_requests": 16},
        },
        "cache": {"base_models_per_replica": 2, "controlnets_per_replica": 2, "lora_slots": 3,
                  "lora_max_rank": 32, "lora_store_bytes": int(store_bytes)},
        "cascade": {"enabled": False, "light": light, "heavy": heavy,
                    "discriminator": DISCRIMINATOR_ID if light else None, "threshold": 0.5},
        "limits": {"max_images_per_request": 4, "max_steps": 50, "max_image_bytes": 4 << 20,
                   "max_loras_per_request": 3, "max_controlnets_per_request": 2},
        "slo": {"latency_s": 5.0},
        "control": {"policies": "coordinator", "gpu_budget_bytes": int(gpu_budget),
                    "host_budget_bytes": int(2 * gpu_budget),
                    # host_slots, this machine's cores: past that many computing replicas, more
                    # jobs at once only stretch every job (2.1x and 2.6-3.4x the profiled time at
                    # 3 and 4 busy on the 2-core build machine), so the router has a request wait
                    # behind the replica that frees soonest (results/live_coordinator_900_seed2_u06_slots.json)
                    **({"routing_args": {"band_pools": False, "host_contention": DEMO_HOST_CONTENTION,
                                         "slack_s": DEMO_ROUTING_SLACK_S, "host_slots": os.cpu_count() or 1}}
                       if replicas > 1 else {})},
    }


def write_demo_config(out: Path, manifest: dict, base_set: tuple[BaseSpec, ...],
                      cn_set: tuple[ControlNetSpec, ...], replicas: int) -> Path:
    import yaml

    kinds = [m["kind"] for m in manifest["models"]]
    header = (f"# Generated by `t2i demo-models` (seed {manifest['seed']}): {kinds.count('base')} "
              f"bases, {kinds.count('lora')} LoRAs, {kinds.count('controlnet')} ControlNets.\n"
              f"# Serve with `t2i serve --config {out / 'config.yaml'}`; model_root is this "
              "folder's absolute path (`--model-root` overrides it).\n")
    path = out / "config.yaml"
    config = demo_config(out, manifest, base_set, cn_set, replicas)
    # One line per model, as in default.yaml, so a 100-model file stays readable.
    line = lambda d: yaml.safe_dump(d, default_flow_style=True, sort_keys=False,  # noqa: E731
                                    width=1 << 16).strip()
    models = "".join(f"  - {line(m)}\n" for m in config.pop("models"))
    head = {k: config.pop(k) for k in list(config) if k != "deployments" and k not in (
        "cache", "cascade", "limits", "slo", "control")}
    deployments = {"deployments": config.pop("deployments")}
    dump = lambda d, flow: yaml.safe_dump(d, sort_keys=False, default_flow_style=flow, width=120)  # noqa: E731
    path.write_text(header + dump(head, False) + "models:\n" + models + dump(deployments, None)
                    + "".join(dump({k: v}, False) for k, v in config.items()))
    return path
