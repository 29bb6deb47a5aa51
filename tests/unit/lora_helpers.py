"""What the LoRA tests share: the demo adapters, the tiny pipeline, its image, and diffusers' own
LoRA path as the reference."""

from __future__ import annotations

import numpy as np
import torch

from deployments.lora_store import read_lora_file

IDS = ["tiny-lora-ink", "tiny-lora-pastel", "tiny-lora-noir", "tiny-lora-sketch", "tiny-lora-neon",
       "tiny-lora-film"]


def tiny_pipe(demo_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(demo_dir / "base" / "tiny-sd-light"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_image(pipe, seed: int = 0) -> np.ndarray:
    return pipe("a lighthouse", num_inference_steps=2, height=32, width=32, guidance_scale=5.0,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def read_weights(demo_dir) -> dict:
    """The demo adapters as the LoRA store prepares them."""
    return {i: read_lora_file(i, str(demo_dir / "lora" / i), max_rank=32) for i in IDS}


def diffusers_reference(demo_dir, loras) -> np.ndarray:
    """The image with diffusers reading the adapter files itself, unfused: the reference path."""
    pipe = tiny_pipe(demo_dir)
    for adapter_id, _ in loras:
        pipe.load_lora_weights(str(demo_dir / "lora" / adapter_id),
                               weight_name="pytorch_lora_weights.safetensors", adapter_name=adapter_id)
    pipe.set_adapters([a for a, _ in loras], adapter_weights=[s for _, s in loras])
    return tiny_image(pipe)
