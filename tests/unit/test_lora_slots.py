"""LoRA hotswap slots give the same images as diffusers' own LoRA loading, and never leak."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.errors import ModelLoadError
from deployments.lora_format import prepare_adapter
from deployments.lora_slots import LoraSlots, slot_target_modules
from lora_helpers import diffusers_reference, read_weights, tiny_image, tiny_pipe


@pytest.fixture(scope="module")
def weights(demo_dir):
    return read_weights(demo_dir)


@pytest.fixture(scope="module")
def slotted(demo_dir):
    pipe = tiny_pipe(demo_dir)
    baseline = tiny_image(pipe)
    return pipe, LoraSlots(pipe, num_slots=3, max_rank=32), baseline


def test_slots_cover_every_attention_projection(demo_dir):
    pipe = tiny_pipe(demo_dir)
    names = slot_target_modules(pipe.unet)
    assert names and all(n.split(".")[-2] in ("attn1", "attn2") or n.endswith("to_out.0") for n in names)
    assert len(names) == 4 * sum(1 for n, _ in pipe.unet.named_modules() if n.endswith((".attn1", ".attn2")))


def test_empty_slots_leave_the_base_model_bit_exact(slotted, demo_dir):
    pipe, _, baseline = slotted
    assert np.array_equal(tiny_image(pipe), baseline)


@pytest.mark.parametrize("loras", [
    [("tiny-lora-noir", 0.8)],
    [("tiny-lora-pastel", 0.5), ("tiny-lora-ink", 1.0)],
    [("tiny-lora-sketch", 1.2), ("tiny-lora-noir", -0.5), ("tiny-lora-ink", 0.3)],
])
def test_hotswapped_adapters_match_plain_diffusers_loading(slotted, weights, demo_dir, loras):
    pipe, slots, baseline = slotted
    slots.activate(loras, weights)
    got = tiny_image(pipe)
    assert np.abs(got - baseline).max() > 1e-2, "the adapters must change the image"
    np.testing.assert_allclose(got, diffusers_reference(demo_dir, loras), atol=1e-4)


def test_removing_adapters_restores_the_baseline_exactly(slotted, weights):
    pipe, slots, baseline = slotted
    slots.activate([("tiny-lora-noir", 1.0), ("tiny-lora-ink", 1.0)], weights)
    assert not np.array_equal(tiny_image(pipe), baseline)
    slots.activate([], weights)
    assert np.array_equal(tiny_image(pipe), baseline)


def test_unused_slot_contributes_nothing(slotted, weights, demo_dir):
    """A slot still holding an earlier request's adapter must not touch the next image."""
    pipe, slots, _ = slotted
    slots.activate([("tiny-lora-noir", 1.0), ("tiny-lora-ink", 1.0), ("tiny-lora-pastel", 1.0)], weights)
    slots.activate([("tiny-lora-ink", 0.7)], weights)
    assert "tiny-lora-noir" in slots.holding  # still resident...
    np.testing.assert_allclose(tiny_image(pipe), diffusers_reference(demo_dir, [("tiny-lora-ink", 0.7)]),
                               atol=1e-4)  # ...but silent


def test_reuse_does_not_swap_and_lru_slot_is_replaced(slotted, weights):
    _, slots, _ = slotted
    slots.activate([("tiny-lora-ink", 1.0), ("tiny-lora-pastel", 1.0), ("tiny-lora-noir", 1.0)], weights)
    assert slots.activate([("tiny-lora-pastel", 1.0)], weights) == 0
    slots.activate([("tiny-lora-noir", 1.0)], weights)
    # ink is now the least recently used resident adapter, so sketch replaces it
    assert slots.activate([("tiny-lora-sketch", 1.0)], weights) == 1
    assert "tiny-lora-ink" not in slots.holding and "tiny-lora-sketch" in slots.holding


def test_alpha_differs_from_rank_is_honoured(slotted, weights, demo_dir):
    """neon has alpha = 2 x rank, film alpha = rank / 2, swapped into slots that last held
    alpha = rank adapters: peft's set_scale would keep the old alpha/r, the slots must not."""
    pipe, slots, _ = slotted
    for loras in ([("tiny-lora-ink", 1.0)], [("tiny-lora-neon", 0.7)],
                  [("tiny-lora-film", 1.0), ("tiny-lora-neon", 0.5)]):
        slots.activate(loras, weights)
        np.testing.assert_allclose(tiny_image(pipe), diffusers_reference(demo_dir, loras), atol=1e-4)


def test_adapter_that_does_not_fit_fails_loudly_and_names_itself(slotted, weights, demo_dir):
    pipe, slots, _ = slotted
    foreign = {"unet.down_blocks.0.resnets.0.conv1.lora_A.weight": torch.zeros(2, 32, 3, 3),
               "unet.down_blocks.0.resnets.0.conv1.lora_B.weight": torch.zeros(32, 2, 1, 1)}
    with pytest.raises(ModelLoadError, match="'bad-adapter'.*outside the slots"):
        slots.activate([("bad-adapter", 1.0)], {"bad-adapter": prepare_adapter("bad-adapter", foreign)})
    assert "bad-adapter" not in slots.holding
    too_big = {"unet." + k: torch.zeros(64, v.shape[1]) if ".lora_A." in k else torch.zeros(v.shape[0], 64)
               for k, v in weights["tiny-lora-ink"]["state_dict"].items()}
    with pytest.raises(ModelLoadError, match="'wide'.*rank 64 exceeds"):
        slots.activate([("wide", 1.0)], {"wide": prepare_adapter("wide", too_big)})
    slots.activate([("tiny-lora-ink", 0.9)], weights)
    np.testing.assert_allclose(tiny_image(pipe), diffusers_reference(demo_dir, [("tiny-lora-ink", 0.9)]),
                               atol=1e-4)


def test_a_failed_swap_inside_diffusers_leaves_the_slot_usable(slotted, weights, demo_dir):
    """Bypass the pre-check so the copy itself fails half-way inside peft."""
    pipe, slots, _ = slotted
    broken = dict(weights["tiny-lora-pastel"])
    broken["state_dict"] = {k: v[:, :3] if ".lora_A." in k else v  # wrong fan-in
                            for k, v in broken["state_dict"].items()}
    slots.check_fits = lambda *_: None
    try:
        for _ in range(len(slots.names)):  # hit every slot
            with pytest.raises(ModelLoadError, match="'broken'"):
                slots.activate([("broken", 1.0)], {"broken": broken})
    finally:
        del slots.check_fits
    loras = [("tiny-lora-ink", 1.0), ("tiny-lora-pastel", 0.5), ("tiny-lora-neon", 0.3)]
    slots.activate(loras, weights)
    np.testing.assert_allclose(tiny_image(pipe), diffusers_reference(demo_dir, loras), atol=1e-4)
