"""Merged LoRAs (cache.lora_mode merge) give the images the slots and diffusers give, and the base
weights always come back bit-exact, also when inference fails."""

from __future__ import annotations

import time

import numpy as np
import pydantic
import pytest
import torch

from deployments.config import CacheBudgets
from deployments.errors import DeadlineExceededError, ModelLoadError, RequestError
from deployments.lora_bank import LoraBank
from deployments.lora_merge import PRISTINE, MergeTerm, WeightMerge, pristine_bytes
from deployments.lora_slots import LoraSlots, slot_target_modules
from deployments.pipeline_engine import PipelineEngine
from deployments.spec import GenerationSpec
from lora_helpers import IDS, diffusers_reference, read_weights, tiny_image, tiny_pipe


def _base_weights(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's tensors by their names (peft-wrapped projections unwrapped)."""
    return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in unet.state_dict().items()
            if ".lora_" not in k}


def _same_weights(unet: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    now = _base_weights(unet)
    return now.keys() == snapshot.keys() and all(torch.equal(now[k], snapshot[k]) for k in now)


@pytest.fixture(scope="module")
def weights(demo_dir):
    return read_weights(demo_dir)


@pytest.fixture(scope="module")
def banked(demo_dir):
    pipe = tiny_pipe(demo_dir)
    baseline, snapshot = tiny_image(pipe), _base_weights(pipe.unet)
    return pipe, LoraBank(pipe.unet, capacity=3, max_rank=32), baseline, snapshot


def _merged_image(pipe, bank, loras, weights) -> np.ndarray:
    bank.stage(loras, weights)
    bank.merge(loras)
    try:
        return tiny_image(pipe)
    finally:
        bank.restore()


@pytest.mark.parametrize("loras", [
    [("tiny-lora-neon", 0.8)],  # alpha = 2 x rank: the adapter's scaling must be applied
    [("tiny-lora-sketch", 1.2), ("tiny-lora-film", -0.5), ("tiny-lora-pastel", 0.3)],
])
def test_merged_image_matches_the_slots_and_diffusers_unfused(banked, weights, demo_dir, loras):
    pipe, bank, baseline, _ = banked
    merged = _merged_image(pipe, bank, loras, weights)
    slotted_pipe = tiny_pipe(demo_dir)
    slots = LoraSlots(slotted_pipe, num_slots=3, max_rank=32)
    slots.activate(loras, weights)
    in_slots = tiny_image(slotted_pipe)
    assert np.abs(merged - baseline).max() > 1e-2, "the adapters must change the image"
    np.testing.assert_allclose(merged, in_slots, atol=1e-4)
    np.testing.assert_allclose(merged, diffusers_reference(demo_dir, loras), atol=1e-4)


def test_the_bank_injects_no_lora_modules_and_copies_only_the_covered_weights(banked):
    pipe, bank, _, _ = banked
    assert not any(".lora_" in k for k in pipe.unet.state_dict())
    lookup = dict(pipe.unet.named_modules())
    covered = sum(lookup[n].weight.numel() * lookup[n].weight.element_size()
                  for n in slot_target_modules(pipe.unet))
    assert pristine_bytes(pipe.unet) == covered > 0
    assert not any(PRISTINE in k for k in pipe.unet.state_dict())  # never saved with the model


def test_base_image_is_bit_exact_after_many_merged_requests(banked, weights):
    pipe, bank, baseline, snapshot = banked
    for i in range(20):  # alternating adapters, sets and scales; more adapters than the bank holds
        loras = ([(IDS[i % len(IDS)], (0.6 + 0.05 * i) * (-1) ** (i // 2))] if i % 2 else
                 [(IDS[i % len(IDS)], 0.9), (IDS[(i + 3) % len(IDS)], -0.7)])
        bank.stage(loras, weights)
        bank.merge(loras)
        assert not _same_weights(pipe.unet, snapshot), "a merge must change the weights"
        assert len(bank.holding) <= bank.capacity
    assert bank.swaps > bank.capacity
    bank.merge([])
    assert _same_weights(pipe.unet, snapshot)
    assert np.array_equal(tiny_image(pipe), baseline)


def test_the_same_adapters_stay_merged_and_others_replace_them(banked, weights):
    pipe, bank, _, snapshot = banked
    loras = [("tiny-lora-ink", 0.7)]
    bank.stage(loras, weights)
    bank.merge(loras)
    once = _base_weights(pipe.unet)
    assert bank.merged == (("tiny-lora-ink", 0.7),)
    assert bank.merge(loras) == (0.0, 0.0) and _same_weights(pipe.unet, once)  # kept: no switch
    other = [("tiny-lora-ink", 0.4)]  # the same adapter at another scale is another merge
    bank.merge(other)
    assert not _same_weights(pipe.unet, once) and bank.merged == (("tiny-lora-ink", 0.4),)
    bank.merge(loras)
    assert _same_weights(pipe.unet, once)  # restored, then merged again: no drift
    bank.merge([])
    assert _same_weights(pipe.unet, snapshot) and bank.merged == ()


def test_evicting_a_merged_adapter_takes_it_out_of_the_weights(demo_dir, weights):
    pipe = tiny_pipe(demo_dir)
    snapshot = _base_weights(pipe.unet)
    bank = LoraBank(pipe.unet, capacity=1, max_rank=32)
    bank.stage([("tiny-lora-ink", 1.0)], weights)
    bank.merge([("tiny-lora-ink", 1.0)])
    bank.stage([("tiny-lora-noir", 1.0)], weights)  # the only place goes to noir
    assert bank.holding == ["tiny-lora-noir"] and bank.merged == ()
    assert _same_weights(pipe.unet, snapshot)


def test_merge_needs_the_adapter_staged_and_stage_needs_its_weights(banked, weights):
    _, bank, _, _ = banked
    with pytest.raises(RequestError, match="'tiny-lora-absent'.*stage it first"):
        bank.merge([("tiny-lora-absent", 1.0)])
    with pytest.raises(RequestError, match="'tiny-lora-absent'.*neither on the device"):
        bank.stage([("tiny-lora-absent", 1.0)], weights)
    with pytest.raises(RequestError, match="at most 3 adapters"):
        bank.stage([(i, 1.0) for i in IDS[:4]], weights)


def test_an_adapter_that_does_not_fit_is_refused_by_name(banked, weights):
    _, bank, _, _ = banked
    prepared = weights["tiny-lora-ink"]
    outside = {**prepared, "state_dict": {"conv_in.lora_A.weight": torch.zeros(4, 4)}}
    with pytest.raises(ModelLoadError, match="'tiny-lora-odd'.*'conv_in'"):
        bank.stage([("tiny-lora-odd", 1.0)], {"tiny-lora-odd": outside})
    assert "tiny-lora-odd" not in bank.holding


def test_a_merge_failing_half_way_is_restored(banked, weights):
    pipe, _, _, snapshot = banked
    layers = [pipe.unet.get_submodule(n) for n in slot_target_modules(pipe.unet)]
    rank = 2
    good = MergeTerm(layers[0], torch.ones(rank, layers[0].in_features),
                     torch.ones(layers[0].out_features, rank), 1.0)
    bad = MergeTerm(layers[1], torch.ones(rank, 3), torch.ones(3, rank), 1.0)  # wrong shapes
    merge = WeightMerge()
    with pytest.raises(RuntimeError):
        merge.merge([good, bad])
    assert not merge.active and _same_weights(pipe.unet, snapshot)


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
    slotted = in_slots.load_pipeline("tiny-sd-light")
    assert isinstance(loaded.slots, LoraBank) and isinstance(slotted.slots, LoraSlots)
    loras = (("tiny-lora-noir", 0.9), ("tiny-lora-pastel", 0.6))
    base = merged.generate(loaded, _spec()).images[0]
    a = merged.generate(loaded, _spec(loras=loras), weights)
    b = in_slots.generate(slotted, _spec(loras=loras), weights)
    assert not np.array_equal(a.images[0], base)
    diff = np.abs(a.images[0].astype(np.int16) - b.images[0].astype(np.int16)).max()
    assert diff <= 1, f"merged and slot images differ by {diff} levels"
    assert {"swap_s", "load_s", "inference_s", "unmerge_s", "merge_s"} <= a.timings.keys()
    assert "unmerge_s" not in b.timings
    assert a.timings["load_s"] >= a.timings["swap_s"] and a.adapters_swapped == 2
    assert np.array_equal(merged.generate(loaded, _spec()).images[0], base)
    assert np.array_equal(in_slots.generate(slotted, _spec()).images[0], base)


def test_failing_inference_still_restores_the_weights(engines, weights):
    merged, _, loaded = engines
    base = merged.generate(loaded, _spec()).images[0]
    snapshot = _base_weights(loaded.pipe.unet)
    late = _spec(loras=(("tiny-lora-ink", 1.0),), deadline=time.time() - 1.0)  # raises after step 1
    with pytest.raises(DeadlineExceededError):
        merged.generate(loaded, late, weights)
    assert _same_weights(loaded.pipe.unet, snapshot)
    assert np.array_equal(merged.generate(loaded, _spec()).images[0], base)


def test_a_hot_pair_stays_merged_between_its_requests(engines, weights):
    merged, _, loaded = engines
    base = merged.generate(loaded, _spec()).images[0]
    loras = (("tiny-lora-film", 0.8),)
    first = merged.generate(loaded, _spec(loras=loras), weights)
    again = merged.generate(loaded, _spec(loras=loras))  # nothing to copy: resident and merged
    assert again.adapters_swapped == 0 and again.timings["unmerge_s"] == 0.0
    assert first.timings["merge_s"] > 0.0 and again.timings["merge_s"] < first.timings["merge_s"]
    assert np.array_equal(first.images[0], again.images[0])
    after = merged.generate(loaded, _spec())
    assert after.timings["unmerge_s"] > 0.0 and np.array_equal(after.images[0], base)


def test_in_merge_mode_the_size_holds_from_load(engines, weights):
    """The model cache measures a pipeline's bytes once, after its load: the pristine copies are
    there from load, the bank's adapters are counted at its capacity, and requests add nothing."""
    from deployments.pipeline_engine import EngineModels

    merged, _, loaded = engines
    lookup = dict(loaded.pipe.unet.named_modules())
    covered = sum(lookup[n].weight.numel() * lookup[n].weight.element_size()
                  for n in slot_target_modules(loaded.pipe.unet))
    assert pristine_bytes(loaded.pipe.unet) == covered > 0
    size = EngineModels(merged).size_of(loaded)
    assert size > covered + loaded.slots.reserved_bytes() > covered
    merged.generate(loaded, _spec(loras=(("tiny-lora-sketch", 1.0),)), {"tiny-lora-sketch": weights["tiny-lora-sketch"]})
    assert EngineModels(merged).size_of(loaded) == size
