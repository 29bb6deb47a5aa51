"""SDXL-class pipelines by config: loaded with the SDXL pipeline class, LoRA slots included."""

from __future__ import annotations

import numpy as np
import pytest

from app.demo_models import SDXL_ID, _write_tokenizer, build_sdxl_pipeline
from deployments.lora_format import prepare_adapter
from deployments.pipeline_engine import PipelineEngine
from deployments.spec import GenerationSpec


@pytest.fixture(scope="module")
def sdxl_config(demo_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    _write_tokenizer(root / "tok")
    build_sdxl_pipeline(root / SDXL_ID, seed=5, tokenizer_dir=root / "tok")
    raw = demo_config.model_dump()
    raw["models"].append({"id": SDXL_ID, "kind": "base", "arch": "sdxl", "path": str(root / SDXL_ID),
                          "sizes": ["64x64"], "default_steps": 2})
    return demo_config.model_validate(raw)


def test_sdxl_entry_loads_the_sdxl_pipeline_and_generates(sdxl_config):
    from diffusers import StableDiffusionXLPipeline

    engine = PipelineEngine(sdxl_config, device="cpu")
    loaded = engine.load_pipeline(SDXL_ID)
    assert isinstance(loaded.pipe, StableDiffusionXLPipeline)
    spec = GenerationSpec(prompt="a castle", base_model=SDXL_ID, width=64, height=64, steps=2,
                          guidance_scale=5.0, seed=3)
    first = engine.generate(loaded, spec).images[0]
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, engine.generate(loaded, spec).images[0])
    assert len(loaded.slots.names) == sdxl_config.cache.lora_slots
    # a LoRA built against this UNet's attention modules goes through the slots on SDXL too
    import torch

    modules = dict(loaded.pipe.unet.named_modules())
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name in [n for n in modules if n.endswith(".attn2.to_v")]:
        layer = modules[name]
        state[f"unet.{name}.lora_A.weight"] = torch.randn(4, layer.in_features, generator=generator) * 0.3
        state[f"unet.{name}.lora_B.weight"] = torch.randn(layer.out_features, 4, generator=generator) * 0.3
    styled = engine.generate(loaded, GenerationSpec(**{**spec.__dict__, "loras": (("x", 1.0),)}),
                             {"x": prepare_adapter("x", state)}).images[0]
    assert not np.array_equal(styled, first)
    assert np.array_equal(engine.generate(loaded, spec).images[0], first)


def test_sdxl_controlnet_wrapper_matches_from_pipe(sdxl_config):
    """The SDXL ControlNet pipeline is built over the base's own modules (both text encoders
    included) with the options from_pipe would carry over."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    from deployments.pipeline_engine import controlnet_wrapper

    loaded = PipelineEngine(sdxl_config, device="cpu").load_pipeline(SDXL_ID)
    net = ControlNetModel.from_unet(loaded.pipe.unet)
    ours = controlnet_wrapper(StableDiffusionXLControlNetPipeline, loaded.pipe, net)
    theirs = StableDiffusionXLControlNetPipeline.from_pipe(loaded.pipe, controlnet=net)
    assert ours.text_encoder_2 is loaded.pipe.text_encoder_2 and ours.tokenizer_2 is loaded.pipe.tokenizer_2
    assert {n: type(m) for n, m in ours.components.items()} == {n: type(m) for n, m in theirs.components.items()}
    assert ours.config.force_zeros_for_empty_prompt == theirs.config.force_zeros_for_empty_prompt
