"""Builds the embedded default: tiny random-weight models in real diffusers layouts.

Everything is deterministic by seed and built from configs (the way diffusers' own tests build
tiny components), then saved with `save_pretrained`, so the service loads them back through the
exact code path it uses for real checkpoints. Nothing is downloaded.

Layout under OUT (ids match app/configs/default.yaml):
  base/tiny-sd-light, base/tiny-sd-heavy     StableDiffusionPipeline folders
  controlnet/tiny-cn-canny, .../tiny-cn-edges ControlNetModel folders
  lora/<id>/pytorch_lora_weights.safetensors  diffusers/peft-format UNet LoRAs of several ranks
  discriminator/tiny-disc/                    config.json + model.safetensors
  manifest.json                               what was built, with seeds and sizes
"""

from __future__ import annotations

import json
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
                      with_sdxl: bool = False) -> dict:
    """Build every demo model under `out`; returns the manifest (also written as manifest.json)."""
    from diffusers import UNet2DConditionModel
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer_dir = out / "_tokenizer"
    _write_tokenizer(tokenizer_dir)
    light_dir = out / "base" / LIGHT_ID
    steps = [
        ("base " + LIGHT_ID, lambda: build_base_pipeline(light_dir, seed + 10, 1, tokenizer_dir)),
        ("base " + HEAVY_ID, lambda: build_base_pipeline(out / "base" / HEAVY_ID, seed + 20, 3,
                                                          tokenizer_dir)),
    ]
    for index, cn_id in enumerate(CONTROLNET_IDS):
        steps.append((f"controlnet {cn_id}", lambda i=index, c=cn_id: build_controlnet(
            out / "controlnet" / c, light_dir / "unet", seed + 30 + i)))
    steps.append(("loras", lambda: [build_lora(
        out / "lora" / spec.id, spec, UNet2DConditionModel.from_pretrained(str(light_dir / "unet")),
        seed)
        for spec in LORA_SPECS]))
    steps.append(("discriminator", lambda: build_discriminator(
        out / "discriminator" / DISCRIMINATOR_ID, seed + 40)))
    if with_sdxl:
        steps.append(("base " + SDXL_ID, lambda: build_sdxl_pipeline(
            out / "base" / SDXL_ID, seed + 50, tokenizer_dir)))
    for label, step in tqdm(steps, desc="demo models", disable=not progress, unit="model"):
        step()

    models = [{"id": LIGHT_ID, "kind": "base", "path": f"base/{LIGHT_ID}"},
              {"id": HEAVY_ID, "kind": "base", "path": f"base/{HEAVY_ID}"}]
    models += [{"id": c, "kind": "controlnet", "path": f"controlnet/{c}"} for c in CONTROLNET_IDS]
    models += [{"id": s.id, "kind": "lora", "path": f"lora/{s.id}", "rank": s.rank,
               "alpha": s.alpha}
               for s in LORA_SPECS]
    models.append({"id": DISCRIMINATOR_ID, "kind": "discriminator",
                   "path": f"discriminator/{DISCRIMINATOR_ID}"})
    if with_sdxl:
        models.append({"id": SDXL_ID, "kind": "base", "path": f"base/{SDXL_ID}", "arch": "sdxl"})
    for model in models:
        model["size_bytes"] = folder_bytes(out / model["path"])
    manifest = {"seed": seed, "build_seconds": round(time.perf_counter() - started, 2),
                "models": models}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
