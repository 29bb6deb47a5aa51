"""LoRA store, preprocessors, discriminator and demo-model builder, without Ray."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from app.demo_models import LORA_SPECS, build_demo_models
from deployments import preprocessors
from deployments.discriminator_model import ImageDiscriminator
from deployments.errors import ModelLoadError, RequestError
from deployments.lora_store import LoRAStore, read_lora_file


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_lora_store_budget_hits_and_eviction(demo_config):
    sizes = {}
    store = LoRAStore(demo_config)
    for adapter_id in ("tiny-lora-ink", "tiny-lora-noir"):
        sizes[adapter_id] = asyncio.run(store.get(adapter_id))["bytes"]
    budget = sizes["tiny-lora-noir"] + sizes["tiny-lora-ink"] - 1
    store = LoRAStore(demo_config.model_copy(update={"cache": demo_config.cache.model_copy(
        update={"lora_store_bytes": budget})}))
    assert sizes["tiny-lora-noir"] > sizes["tiny-lora-ink"] > 0
    first = asyncio.run(store.get("tiny-lora-ink"))
    again = asyncio.run(store.get("tiny-lora-ink"))
    assert not first["hit"] and again["hit"] and again["ref"] is first["ref"]
    loaded = asyncio.run(store.prefetch(["tiny-lora-ink", "tiny-lora-neon"]))
    assert loaded == ["tiny-lora-neon"]
    stats = asyncio.run(store.stats())
    assert stats["bytes"] <= stats["budget_bytes"] and (stats["hits"], stats["misses"]) == (1, 1)


def test_lora_store_rejects_unknown_and_wrong_kind(demo_config):
    store = LoRAStore(demo_config)
    with pytest.raises(RequestError, match="unknown LoRA id 'nope'"):
        asyncio.run(store.get("nope"))
    with pytest.raises(RequestError, match="is a base"):
        asyncio.run(store.get("tiny-sd-light"))


def test_read_lora_file_errors_name_the_adapter(demo_dir, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "w.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="'corrupt' failed to load: cannot read"):
        read_lora_file("corrupt", str(corrupt), 32)
    with pytest.raises(ModelLoadError, match="'empty-dir'.*found 0"):
        read_lora_file("empty-dir", str(tmp_path), 32)
    with pytest.raises(ModelLoadError, match="rank 32 exceeds"):
        read_lora_file("tiny-lora-noir", str(demo_dir / "lora" / "tiny-lora-noir"), 16)


def test_preprocessors_produce_conditioning_images():
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:30, 20:40] = 255
    edges = preprocessors.prepare(image, "canny", width=32, height=24)
    assert edges.shape == (24, 32, 3) and edges.dtype == np.uint8
    assert edges.max() == 255 and edges.min() == 0
    assert preprocessors.prepare(image, "sobel", 32, 24).max() > 0
    with pytest.raises(RequestError, match="unknown preprocessor 'nope'"):
        preprocessors.get("nope")


def test_aux_preprocessor_without_the_extra_is_a_clear_error():
    try:
        import controlnet_aux  # noqa: F401
        pytest.skip("controlnet-aux is installed here")
    except ImportError:
        pass
    with pytest.raises(RequestError, match="optional controlnet-aux extra"):
        preprocessors.get("aux:openpose")


@pytest.mark.parametrize("name", ["nope", "aux:no_such_detector_here"])
def test_preprocessor_errors_name_the_indexed_field(name):
    """The ControlNet deployment names the request's own entry, controlnets[1].preprocessor."""
    import asyncio
    from types import SimpleNamespace

    from deployments.controlnet import ControlNet

    net = ControlNet.__new__(ControlNet)  # preprocess reads only the config's image limit
    net.config = SimpleNamespace(limits=SimpleNamespace(max_image_pixels=4096 * 4096))
    image = _png(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(RequestError) as caught:
        asyncio.run(ControlNet.preprocess(net, image, name, 8, 8, "controlnets[1].image"))
    assert caught.value.field == "controlnets[1].preprocessor"


def test_decode_image_accepts_png_jpeg_and_rejects_others():
    array = np.full((8, 8, 3), 200, np.uint8)
    assert preprocessors.decode_image(_png(array)).shape == (8, 8, 3)
    assert preprocessors.decode_image(_png(array, "JPEG")).shape == (8, 8, 3)
    with pytest.raises(RequestError, match="not a decodable"):
        preprocessors.decode_image(b"GIF89a-but-not-really")
    with pytest.raises(RequestError, match="PNG or JPEG"):
        preprocessors.decode_image(_png(array, "BMP"))


def test_discriminator_round_trip_and_range(demo_dir, tmp_path):
    model = ImageDiscriminator.load(demo_dir / "discriminator" / "tiny-disc")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    scores = model.score(images)
    assert all(0.0 <= s <= 1.0 for s in scores) and len(set(scores)) == 3
    model.save(tmp_path / "copy")
    assert ImageDiscriminator.load(tmp_path / "copy").score(images) == scores
    with pytest.raises(ValueError, match="failed to load"):
        ImageDiscriminator.load(tmp_path / "absent")


def test_demo_models_are_deterministic_and_complete(demo_dir, tmp_path):
    manifest = json.loads((demo_dir / "manifest.json").read_text())
    kinds = [m["kind"] for m in manifest["models"]]
    assert kinds.count("base") == 2 and kinds.count("controlnet") == 2 and kinds.count("discriminator") == 1
    ranks = {m["rank"] for m in manifest["models"] if m["kind"] == "lora"}
    assert kinds.count("lora") >= 8 and len(ranks) >= 5
    assert any(s.alpha != s.rank for s in LORA_SPECS)
    again = build_demo_models(tmp_path / "again", seed=0, progress=False)
    other_seed = build_demo_models(tmp_path / "seed1", seed=1, progress=False)
    assert other_seed["seed"] == 1
    # Tensors and metadata, not file bytes: safetensors writes header metadata from a hash map,
    # so its key order differs from one write to the next.
    from safetensors import safe_open

    def contents(path):
        with safe_open(str(path), "pt") as f:
            return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}

    for rel in ("lora/tiny-lora-neon/pytorch_lora_weights.safetensors",
                "discriminator/tiny-disc/model.safetensors",
                "base/tiny-sd-heavy/unet/diffusion_pytorch_model.safetensors"):
        (meta_a, a), (meta_b, b) = contents(demo_dir / rel), contents(tmp_path / "again" / rel)
        assert meta_a == meta_b and a.keys() == b.keys()
        assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
        _, c = contents(tmp_path / "seed1" / rel)
        assert any(not np.array_equal(a[k].numpy(), c[k].numpy()) for k in a), "seed must matter"
    assert [m["size_bytes"] for m in again["models"]] == [m["size_bytes"] for m in manifest["models"]]


def test_policies_stay_pure():
    """policies/ is shared by the simulator and the live system: no ray/torch/fastapi imports."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "policies"
    banned = {"ray", "torch", "fastapi", "diffusers", "transformers", "peft"}
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in banned]
    assert not offenders, offenders


def _store(demo_config, policy: str, budget: int) -> LoRAStore:
    return LoRAStore(demo_config.model_copy(update={"cache": demo_config.cache.model_copy(
        update={"lora_store_bytes": budget, "lora_store_policy": policy})}))


@pytest.mark.parametrize("policy, survivor", [("lru", "tiny-lora-ink"), ("lfu", "tiny-lora-pastel")])
def test_lora_store_evicts_by_the_configured_registry_policy(demo_config, policy, survivor):
    """pastel is used three times, then ink once (more recently): a third adapter that needs
    one of their places evicts pastel under LRU and ink under LFU."""
    size = {a: asyncio.run(LoRAStore(demo_config).get(a))["bytes"]
            for a in ("tiny-lora-pastel", "tiny-lora-ink", "tiny-lora-sketch")}
    # room for sketch (the largest) plus one of the other two, not all three
    store = _store(demo_config, policy, budget=size["tiny-lora-sketch"] + size["tiny-lora-ink"])
    for _ in range(3):
        asyncio.run(store.get("tiny-lora-pastel"))
    asyncio.run(store.get("tiny-lora-ink"))
    asyncio.run(store.get("tiny-lora-sketch"))
    stats = asyncio.run(store.stats())
    assert set(stats["adapters"]) == {"tiny-lora-sketch", survivor}
    assert stats["policy"] == policy and stats["evictions"] == 1


def test_store_policy_must_be_registered_and_online(demo_config):
    from deployments.config import CacheBudgets

    with pytest.raises(ValueError, match="unknown eviction policy 'nope'"):
        CacheBudgets(lora_store_policy="nope")
    with pytest.raises(ValueError, match="offline only"):
        CacheBudgets(lora_store_policy="belady")


def test_deployments_never_import_app():
    """Imports point one way, app -> deployments -> policies: the config schema lives in
    deployments/ so no deployment reaches up into app/ (nor into trace_replay/)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "deployments"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in ("app", "trace_replay"), f"{path.name} imports {name}"


def test_request_validation_does_not_load_opencv():
    """The ingress validates preprocessor names from deployments.preprocessor_names; importing the ingress
    module must not drag OpenCV into its process."""
    import subprocess
    import sys

    code = "import sys, app.ingress; print('cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
