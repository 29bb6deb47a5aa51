"""Truncated or corrupt model files and folders fail loudly, naming the model, and leave the
loader able to load the intact models next (copies of the tiny demo models, corrupted here)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from deployments.config import ServeConfig
from deployments.discriminator import Discriminator
from deployments.errors import ModelLoadError
from deployments.lora_store import LoRAStore, read_lora_file
from deployments.pipeline_engine import PipelineEngine


def _truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file after its header: safetensors then declares more bytes than there are."""
    data = path.read_bytes()
    path.write_bytes(data[: max(16, int(len(data) * keep))])


def _first(folder: Path, pattern: str = "*.safetensors") -> Path:
    return next(iter(sorted(folder.rglob(pattern))))


BASE_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated unet weights": lambda d: _truncate(_first(d / "unet")),
    "truncated text encoder": lambda d: _truncate(_first(d / "text_encoder"), keep=0.9),
    "no model_index.json": lambda d: (d / "model_index.json").unlink(),
    "model_index.json not JSON": lambda d: (d / "model_index.json").write_text("{not json"),
    "unet folder missing": lambda d: shutil.rmtree(d / "unet"),
    "unet config garbage": lambda d: (d / "unet" / "config.json").write_bytes(b"\x00\xff" * 8),
}


@pytest.fixture()
def damaged(demo_dir, demo_config, tmp_path):
    """copy(kind, name, damage) -> a config whose model `broken` is the damaged copy."""
    def copy(kind: str, name: str, damage: Callable[[Path], None]) -> ServeConfig:
        target = tmp_path / name
        shutil.copytree(demo_dir / kind / name, target)
        damage(target)
        raw = demo_config.model_dump()
        entry = next(m for m in raw["models"] if m["id"] == name)
        raw["models"].append({**entry, "id": "broken", "path": str(target)})
        return ServeConfig.model_validate(raw)

    return copy


@pytest.mark.parametrize("damage", list(BASE_DAMAGE))
def test_a_damaged_base_model_is_a_load_error_naming_it_and_the_engine_keeps_loading(damaged, damage):
    engine = PipelineEngine(damaged("base", "tiny-sd-light", BASE_DAMAGE[damage]), device="cpu")
    with pytest.raises(ModelLoadError) as info:
        engine.load_pipeline("broken")
    assert info.value.model_id == "broken" and str(info.value).startswith("model 'broken' failed to load")
    assert engine.load_pipeline("tiny-sd-light").pipe is not None


def test_a_truncated_controlnet_is_a_load_error_naming_it(damaged):
    engine = PipelineEngine(damaged("controlnet", "tiny-cn-canny", lambda d: _truncate(_first(d))),
                            device="cpu")
    with pytest.raises(ModelLoadError, match="model 'broken' failed to load"):
        engine.load_controlnet_model("broken")
    assert engine.load_controlnet_model("tiny-cn-canny") is not None


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.99])
def test_a_truncated_lora_is_a_load_error_naming_it_and_the_store_keeps_serving(damaged, keep):
    config = damaged("lora", "tiny-lora-ink", lambda d: _truncate(_first(d), keep))
    with pytest.raises(ModelLoadError, match="model 'broken' failed to load: cannot read"):
        read_lora_file("broken", config.resolve_source(config.entry("broken")), 32)

    async def main():
        store = LoRAStore(config)
        with pytest.raises(ModelLoadError, match="'broken'"):
            await store.get("broken")
        assert (await store.get("tiny-lora-ink"))["bytes"] > 0
        assert (await store.stats())["adapters"] == ["tiny-lora-ink"]

    asyncio.run(main())


@pytest.mark.parametrize("damage", ["truncated", "config"])
def test_a_damaged_discriminator_is_a_load_error_naming_it(damaged, damage):
    def harm(folder: Path) -> None:
        if damage == "truncated":
            _truncate(folder / "model.safetensors")
        else:
            (folder / "config.json").write_text('{"unexpected": 1}')

    config = damaged("discriminator", "tiny-disc", harm)

    async def main():
        disc = Discriminator(config)
        with pytest.raises(ModelLoadError, match="model 'broken' failed to load"):
            await disc._model("broken")
        assert (await disc._model("tiny-disc")) is not None

    asyncio.run(main())
