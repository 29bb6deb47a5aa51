"""The engine on a CUDA device in float16; skipped on machines without one (CI has none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def gpu_engine(demo_config):
    from deployments.pipeline_engine import PipelineEngine

    raw = demo_config.model_dump()
    for model in raw["models"]:
        if model["kind"] in ("base", "controlnet"):
            model["dtype"] = "float16"
    return PipelineEngine(demo_config.model_validate(raw), device="cuda")


def test_fp16_generation_on_cuda_is_deterministic(gpu_engine):
    from deployments.spec import GenerationSpec

    loaded = gpu_engine.load_pipeline("tiny-sd-light")
    assert next(loaded.pipe.unet.parameters()).device.type == "cuda"
    spec = GenerationSpec(prompt="a kite", base_model="tiny-sd-light", width=64, height=64,
                          steps=2, guidance_scale=5.0, seed=3)
    first = gpu_engine.generate(loaded, spec).images[0]
    assert first.shape == (64, 64, 3) and np.array_equal(first, gpu_engine.generate(loaded, spec).images[0])


def test_hotswapped_lora_on_cuda_changes_and_restores(gpu_engine, demo_dir):
    from deployments.lora_store import read_lora_file
    from deployments.spec import GenerationSpec

    loaded = gpu_engine.load_pipeline("tiny-sd-light")
    weights = {"tiny-lora-noir": read_lora_file("tiny-lora-noir", str(demo_dir / "lora/tiny-lora-noir"), 32)}
    base = GenerationSpec(prompt="a kite", base_model="tiny-sd-light", width=64, height=64,
                          steps=2, guidance_scale=5.0, seed=3)
    plain = gpu_engine.generate(loaded, base).images[0]
    styled = gpu_engine.generate(loaded, GenerationSpec(**{**base.__dict__, "loras": (("tiny-lora-noir", 1.0),)}),
                                 weights).images[0]
    assert not np.array_equal(plain, styled)
    assert np.array_equal(gpu_engine.generate(loaded, base).images[0], plain)


def test_host_tier_round_trip_is_pinned_and_keeps_the_image(gpu_engine, demo_dir):
    from deployments.lora_store import read_lora_file
    from deployments.pinned_moves import is_pinned
    from deployments.pipeline_engine import EngineModels, _modules
    from deployments.spec import GenerationSpec

    loaded = gpu_engine.load_pipeline("tiny-sd-light")
    source = EngineModels(gpu_engine)
    weights = {"tiny-lora-noir": read_lora_file("tiny-lora-noir", str(demo_dir / "lora/tiny-lora-noir"), 32)}
    spec = GenerationSpec(prompt="a kite", base_model="tiny-sd-light", width=64, height=64, steps=2,
                          guidance_scale=5.0, seed=3, loras=(("tiny-lora-noir", 0.9),))
    before = gpu_engine.generate(loaded, spec, weights).images[0]  # merged, and left merged
    source.to_host(loaded)
    params = [t for m in _modules(loaded) for t in m.parameters()]
    assert all(t.device.type == "cpu" for t in params) and is_pinned(_modules(loaded))
    source.to_device(loaded)
    assert all(t.device.type == "cuda" for m in _modules(loaded) for t in m.parameters())
    assert np.array_equal(gpu_engine.generate(loaded, spec).images[0], before)  # bank moved too


def test_direct_load_on_cuda_reads_what_diffusers_reads(gpu_engine):
    from diffusers import StableDiffusionPipeline

    loaded = gpu_engine.load_pipeline("tiny-sd-light")
    assert loaded.loader == "direct"  # cache.pipeline_loader auto on a GPU
    entry = gpu_engine.config.entry("tiny-sd-light")
    plain = StableDiffusionPipeline.from_pretrained(gpu_engine.config.resolve_source(entry),
                                                    torch_dtype=torch.float16, safety_checker=None,
                                                    requires_safety_checker=False).to("cuda")
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(loaded.pipe, name).state_dict(), getattr(plain, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b), name
    plain.set_progress_bar_config(disable=True)
    images = [p("a kite", num_inference_steps=2, height=64, width=64, guidance_scale=5.0, output_type="np",
                generator=torch.Generator().manual_seed(3)).images[0] for p in (loaded.pipe, plain)]
    assert np.array_equal(*images)


def test_controlnet_wrapper_on_cuda_keeps_float16_and_draws_what_from_pipe_draws(gpu_engine):
    """float16 modules on the device: the constructor-built wrapper leaves them there in their
    dtype and draws what from_pipe (told the dtype) draws. Told nothing, from_pipe casts the base
    pipeline's shared modules to float32 in place, which the engine's old from_pipe call did."""
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    from deployments.pipeline_engine import controlnet_wrapper

    base = gpu_engine.load_pipeline("tiny-sd-light").pipe
    net = gpu_engine.load_controlnet_model("tiny-cn-canny")
    ours = controlnet_wrapper(StableDiffusionControlNetPipeline, base, net)
    assert base.unet.dtype == ours.unet.dtype == torch.float16 and ours.device.type == "cuda"
    theirs = StableDiffusionControlNetPipeline.from_pipe(base, controlnet=net, torch_dtype=torch.float16)
    theirs.set_progress_bar_config(disable=True)
    control = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[:, None, None] * 4, (1, 64, 3)))
    images = [p("a kite", image=control, num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(3)).images[0] for p in (ours, theirs)]
    assert np.array_equal(*images)
    StableDiffusionControlNetPipeline.from_pipe(base, controlnet=net)  # the old call
    assert base.unet.dtype == torch.float32  # the hazard the wrapper removed
    base.to(torch.float16)


def test_a_load_beside_a_running_generation_on_cuda_leaves_both_whole(gpu_engine):
    """Load ahead on a GPU replica: a queued request's base model loads in another thread while
    the running request computes on the same device; the image is the one made alone, and the
    pipeline loaded beside it is on the device and draws what a plain load of it draws."""
    from concurrent.futures import ThreadPoolExecutor

    from deployments.spec import GenerationSpec

    running = gpu_engine.load_pipeline("tiny-sd-light")
    spec = GenerationSpec(prompt="a kite", base_model="tiny-sd-light", width=64, height=64,
                          steps=8, guidance_scale=5.0, seed=3)
    heavy = GenerationSpec(**{**spec.__dict__, "base_model": "tiny-sd-heavy", "steps": 2})
    alone = gpu_engine.generate(running, spec).images[0]
    plain = gpu_engine.load_pipeline("tiny-sd-heavy")
    expected = gpu_engine.generate(plain, heavy).images[0]
    plain._free()
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            image = pool.submit(lambda: gpu_engine.generate(running, spec).images[0])
            loaded = pool.submit(gpu_engine.load_pipeline, "tiny-sd-heavy").result()
            assert np.array_equal(image.result(), alone)
            assert all(p.device.type == "cuda" for p in loaded.pipe.unet.parameters())
            assert np.array_equal(gpu_engine.generate(loaded, heavy).images[0], expected)
            loaded._free()
