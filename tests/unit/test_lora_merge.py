"""Merged LoRAs (cache.lora_mode merge) give the images the slots and diffusers give, and the base
weights always come back bit-exact, also when inference fails."""

from __future__ import annotations

import time

import numpy as np
import pydantic
import pytest
import torch

from deployments.config import CacheBudgets
from deployments.errors import DeadlineExceededError, RequestError
from deployments.lora_merge import PRISTINE, MergeTerm, WeightMerge, pristine_bytes
from deployments.lora_slots import LoraSlots, slot_target_modules
from deployments.pipeline_engine import PipelineEngine
from deployments.spec import GenerationSpec
from lora_helpers import IDS, diffusers_reference, read_weights, tiny_image, tiny_pipe


def _base_weights(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's tensors by their names before peft wrapped the projections."""
    return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in unet.state_dict().items()
            if ".lora_" not in k}


def _same_weights(unet: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    now = _base_weights(unet)
    return now.keys() == snapshot.keys() and all(torch.equal(now[k], snapshot[k]) for k in now)


@pytest.fixture(scope="module")
def weights(demo_dir):
    return read_weights(demo_dir)


@pytest.fixture(scope="module")
def slotted(demo_dir):
    pipe = tiny_pipe(demo_dir)
    baseline, snapshot = tiny_image(pipe), _base_weights(pipe.unet)
    return pipe, LoraSlots(pipe, num_slots=3, max_rank=32), baseline, snapshot


def _merged_image(pipe, slots, loras, weights) -> np.ndarray:
    slots.stage(loras, weights)
    slots.merge(loras)
    try:
        return tiny_image(pipe)
    finally:
        slots.restore()


@pytest.mark.parametrize("loras", [
    [("tiny-lora-neon", 0.8)],  # alpha = 2 x rank: the slot's unit scaling must be applied
    [("tiny-lora-sketch", 1.2), ("tiny-lora-film", -0.5), ("tiny-lora-pastel", 0.3)],
])
def test_merged_image_matches_the_slots_and_diffusers_unfused(slotted, weights, demo_dir, loras):
    pipe, slots, baseline, _ = slotted
    merged = _merged_image(pipe, slots, loras, weights)
    slots.activate(loras, weights)
    in_slots = tiny_image(pipe)
    slots.activate([], weights)
    assert np.abs(merged - baseline).max() > 1e-2, "the adapters must change the image"
    np.testing.assert_allclose(merged, in_slots, atol=1e-4)
    np.testing.assert_allclose(merged, diffusers_reference(demo_dir, loras), atol=1e-4)


def test_base_image_is_bit_exact_after_many_merged_requests(slotted, weights):
    pipe, slots, baseline, snapshot = slotted
    for i in range(20):  # alternating adapters, sets and scales; more adapters than slots
        loras = ([(IDS[i % len(IDS)], (0.6 + 0.05 * i) * (-1) ** (i // 2))] if i % 2 else
                 [(IDS[i % len(IDS)], 0.9), (IDS[(i + 3) % len(IDS)], -0.7)])
        slots.stage(loras, weights)
        slots.merge(loras)
        assert not _same_weights(pipe.unet, snapshot), "a merge must change the weights"
        slots.restore()
    assert slots.swaps > len(slots.names)
    assert _same_weights(pipe.unet, snapshot)
    slots.stage([], weights)
    assert np.array_equal(tiny_image(pipe), baseline)


def test_merge_needs_the_adapter_in_a_slot(slotted, weights):
    _, slots, _, _ = slotted
    with pytest.raises(RequestError, match="'tiny-lora-absent'.*stage it first"):
        slots.merge([("tiny-lora-absent", 1.0)])


def test_a_merge_failing_half_way_is_restored(slotted, weights):
    pipe, slots, _, snapshot = slotted
    slots.stage([("tiny-lora-ink", 1.0)], weights)
    name = slots.names[slots.holding.index("tiny-lora-ink")]
    layers = [m for _, m in pipe.unet.named_modules() if hasattr(m, "lora_A")]
    merge = WeightMerge()
    good = MergeTerm(layers[0], name, 1, 1.0)
    bad = MergeTerm(layers[1], "no-such-slot", 1, 1.0)  # KeyError after the first weight changed
    with pytest.raises(KeyError):
        merge.merge([good, bad])
    assert merge.active and not _same_weights(pipe.unet, snapshot)
    merge.restore()
    assert not merge.active and _same_weights(pipe.unet, snapshot)


def test_pristine_copy_holds_only_the_patched_projections(demo_dir, weights):
    pipe = tiny_pipe(demo_dir)
    slots = LoraSlots(pipe, num_slots=3, max_rank=32)
    lookup = dict(pipe.unet.named_modules())

    def weight_bytes(suffixes: tuple[str, ...]) -> int:
        layers = [lookup[n].get_base_layer() for n in slot_target_modules(pipe.unet) if n.endswith(suffixes)]
        return sum(m.weight.numel() * m.weight.element_size() for m in layers)

    assert pristine_bytes(pipe.unet) == 0  # nothing before the first merge
    slots.stage([("tiny-lora-pastel", 1.0)], weights)  # pastel patches to_q and to_v only
    slots.merge([("tiny-lora-pastel", 1.0)])
    slots.restore()
    assert pristine_bytes(pipe.unet) == weight_bytes((".to_q", ".to_v"))
    assert pristine_bytes(pipe.unet) < weight_bytes((".to_q", ".to_k", ".to_v", ".to_out.0"))
    slots.stage([("tiny-lora-sketch", 1.0)], weights)  # to_k and to_out.0: copies for those too
    slots.merge([("tiny-lora-sketch", 1.0)])
    slots.restore()
    assert pristine_bytes(pipe.unet) == weight_bytes((".to_q", ".to_k", ".to_v", ".to_out.0"))
    assert not any(PRISTINE in k for k in pipe.unet.state_dict())  # never saved with the model


# -- through the engine ---------------------------------------------------------------------------
def _spec(**overrides) -> GenerationSpec:
    values = dict(prompt="a small boat", base_model="tiny-sd-light", width=32, height=32, steps=2,
                  guidance_scale=5.0, seed=7)
    values.update(overrides)
    return GenerationSpec(**values)


def _engine(config, mode: str) -> PipelineEngine:
    cache = config.cache.model_copy(update={"lora_mode": mode})
    return PipelineEngine(config.model_copy(update={"cache": cache}), device="cpu")


@pytest.fixture(scope="module")
def engines(demo_config):
    merged, in_slots = _engine(demo_config, "merge"), _engine(demo_config, "slots")
    return merged, in_slots, merged.load_pipeline("tiny-sd-light")


def test_merge_is_the_default_and_slots_stay_selectable():
    assert CacheBudgets().lora_mode == "merge"
    assert CacheBudgets(lora_mode="slots").lora_mode == "slots"
    with pytest.raises(pydantic.ValidationError, match="lora_mode"):
        CacheBudgets(lora_mode="fused")


def test_engine_modes_give_the_same_image_and_report_their_times(engines, weights):
    merged, in_slots, loaded = engines
    loras = (("tiny-lora-noir", 0.9), ("tiny-lora-pastel", 0.6))
    base = merged.generate(loaded, _spec()).images[0]
    a = merged.generate(loaded, _spec(loras=loras), weights)
    b = in_slots.generate(loaded, _spec(loras=loras), weights)
    assert not np.array_equal(a.images[0], base)
    diff = np.abs(a.images[0].astype(np.int16) - b.images[0].astype(np.int16)).max()
    assert diff <= 1, f"merged and slot images differ by {diff} levels"
    assert {"swap_s", "load_s", "inference_s", "unmerge_s"} <= a.timings.keys()
    assert "unmerge_s" not in b.timings
    assert a.timings["load_s"] >= a.timings["swap_s"]
    for engine in (merged, in_slots):  # either mode leaves the base model as it was
        assert np.array_equal(engine.generate(loaded, _spec()).images[0], base)


def test_failing_inference_still_restores_the_weights(engines, weights):
    merged, _, loaded = engines
    base = merged.generate(loaded, _spec()).images[0]
    snapshot = _base_weights(loaded.pipe.unet)
    late = _spec(loras=(("tiny-lora-ink", 1.0),), deadline=time.time() - 1.0)  # raises after step 1
    with pytest.raises(DeadlineExceededError):
        merged.generate(loaded, late, weights)
    assert _same_weights(loaded.pipe.unet, snapshot)
    assert np.array_equal(merged.generate(loaded, _spec()).images[0], base)


def test_in_merge_mode_the_pristine_copies_exist_from_load_so_the_size_holds(engines, weights):
    """The model cache measures a pipeline's bytes once, after its load: under merge mode every
    covered projection's copy is already there, and merges add nothing to it."""
    from deployments.lora_merge import pristine_bytes
    from deployments.pipeline_engine import EngineModels

    merged, _, loaded = engines
    lookup = dict(loaded.pipe.unet.named_modules())
    covered = sum(lookup[n].get_base_layer().weight.numel() * lookup[n].get_base_layer().weight.element_size()
                  for n in slot_target_modules(loaded.pipe.unet))
    assert pristine_bytes(loaded.pipe.unet) == covered > 0
    size = EngineModels(merged).size_of(loaded)
    merged.generate(loaded, _spec(loras=(("tiny-lora-sketch", 1.0),)), {"tiny-lora-sketch": weights["tiny-lora-sketch"]})
    assert EngineModels(merged).size_of(loaded) == size
