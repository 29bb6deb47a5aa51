"""The direct pipeline loader reads exactly what diffusers reads, and hands over to diffusers'
loader for folders it does not read."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from deployments import direct_load
from deployments.pipeline_engine import PipelineEngine
from deployments.spec import GenerationSpec


def _all_tensors(pipe) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, module in pipe.components.items()
            if isinstance(module, torch.nn.Module) for k, v in module.state_dict().items()}


def _engine(config, loader: str) -> PipelineEngine:
    cache = config.cache.model_copy(update={"pipeline_loader": loader})
    return PipelineEngine(config.model_copy(update={"cache": cache}), device="cpu")


@pytest.mark.parametrize("model_id", ["tiny-sd-light", "tiny-sd-heavy"])
def test_direct_load_gives_diffusers_weights_and_images(demo_config, model_id):
    direct = _engine(demo_config, "direct").load_pipeline(model_id)
    plain = _engine(demo_config, "diffusers").load_pipeline(model_id)
    assert (direct.loader, plain.loader) == ("direct", "diffusers")
    a, b = _all_tensors(direct.pipe), _all_tensors(plain.pipe)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    assert not direct.pipe.unet.training and not direct.pipe.text_encoder.training
    spec = GenerationSpec(prompt="a kite", base_model=model_id, width=32, height=32, steps=2,
                          guidance_scale=5.0, seed=3)
    engine = _engine(demo_config, "direct")
    assert np.array_equal(engine.generate(direct, spec).images[0], engine.generate(plain, spec).images[0])


def test_auto_picks_the_direct_loader_on_a_gpu_only(demo_config):
    from deployments.config import CacheBudgets

    assert CacheBudgets().pipeline_loader == "auto"
    assert PipelineEngine(demo_config, device="cpu").load_pipeline("tiny-sd-light").loader == "diffusers"


def test_direct_load_reads_sdxl_pipelines(demo_config, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from app.demo_models import SDXL_ID, _write_tokenizer, build_sdxl_pipeline

    _write_tokenizer(tmp_path / "tok")
    build_sdxl_pipeline(tmp_path / SDXL_ID, seed=5, tokenizer_dir=tmp_path / "tok")
    direct = direct_load.load_pipeline(StableDiffusionXLPipeline, tmp_path / SDXL_ID, "cpu", torch.float32)
    plain = StableDiffusionXLPipeline.from_pretrained(str(tmp_path / SDXL_ID))
    a, b = _all_tensors(direct), _all_tensors(plain)
    assert "text_encoder_2.text_projection.weight" in a
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


def test_misaligned_tensors_and_odd_dtypes_read_like_safetensors(tmp_path):
    tensors = {"a_odd": torch.arange(3, dtype=torch.uint8),  # 3 bytes: what follows is misaligned
               "b_f32": torch.randn(5, 7), "c_f16": torch.randn(4).half(), "d_i64": torch.arange(6),
               "e_bf16": torch.randn(2, 3).bfloat16(), "f_bool": torch.tensor([True, False])}
    save_file(tensors, tmp_path / "w.safetensors")
    read, reference = direct_load.read_safetensors(tmp_path / "w.safetensors", "cpu"), load_file(tmp_path / "w.safetensors")
    assert read.keys() == reference.keys()
    for k in reference:
        assert read[k].dtype == reference[k].dtype and torch.equal(read[k], reference[k]), k


def test_a_file_read_in_many_chunks_and_threads_is_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(direct_load, "CHUNK_BYTES", 4096)  # 977 KiB: 245 chunks over 8 threads
    tensors = {"w": torch.randn(500, 500)}
    save_file(tensors, tmp_path / "w.safetensors")
    assert torch.equal(direct_load.read_safetensors(tmp_path / "w.safetensors", "cpu")["w"], tensors["w"])


def test_unreadable_folders_fall_back_to_diffusers(demo_config, demo_dir, tmp_path):
    copy = tmp_path / "tiny-sd-light"
    shutil.copytree(demo_dir / "base" / "tiny-sd-light", copy)
    unet = copy / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(unet)
    state["extra.weight"] = torch.zeros(2)  # a key the UNet does not have
    save_file(state, unet)
    with pytest.raises(direct_load.Unsupported, match=r"unet: keys differ.*unexpected \['extra.weight'\]"):
        direct_load.load_module("diffusers", "UNet2DConditionModel", copy / "unet", "cpu", torch.float32)
    shutil.copy(unet, copy / "unet" / "second.safetensors")
    with pytest.raises(direct_load.Unsupported, match="expected one safetensors file"):
        direct_load.component_state(copy / "unet", "cpu")
    raw = demo_config.model_dump()
    for model in raw["models"]:
        if model["id"] == "tiny-sd-light":
            model["path"] = str(copy)
    config = demo_config.model_validate(raw)
    loaded = _engine(config, "direct").load_pipeline("tiny-sd-light")  # diffusers ignores extras
    assert loaded.loader == "diffusers"


def test_staging_chunks_cover_every_tensor_byte_once(tmp_path):
    """The GPU path's chunking (chunk_pieces), replayed on the host: chunk sizes that split
    tensors anywhere give back the file's tensors exactly."""
    tensors = {"a": torch.randn(33), "b": torch.arange(7, dtype=torch.uint8), "c": torch.randn(5, 9).half(),
               "empty": torch.zeros(0), "d": torch.randn(100)}
    save_file(tensors, tmp_path / "w.safetensors")
    raw = (tmp_path / "w.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    data = torch.frombuffer(bytearray(raw[8 + header_len:]), dtype=torch.uint8)
    header = {k: v for k, v in json.loads(raw[8:8 + header_len]).items() if k != "__metadata__"}
    for chunk in (1, 3, 64, 1000, len(data)):
        out = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in tensors.items()}
        spans = sorted((header[k]["data_offsets"][0], header[k]["data_offsets"][1], out[k].reshape(-1).view(torch.uint8))
                       for k in out if out[k].numel())
        written = torch.zeros(len(data), dtype=torch.int32)
        for at in range(0, len(data), chunk):
            n = min(chunk, len(data) - at)
            for target, source in direct_load.chunk_pieces(spans, [s[0] for s in spans], at, n):
                target.copy_(data[at:at + n][source])
                written[at + source.start:at + source.stop] += 1
        assert written.eq(1).all(), f"chunk {chunk}: bytes copied {written.unique().tolist()} times"
        for k in tensors:
            assert torch.equal(out[k], tensors[k]), (chunk, k)
