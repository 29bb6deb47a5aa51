"""Pre-allocated LoRA hotswap slots on one pipeline's UNet (`cache.lora_mode: slots`).

At pipeline load every slot gets a zero adapter of the maximum rank over the standard attention
projections (the "declare max rank up front" of diffusers/peft hotswap), so a request's adapters
are later copied into existing tensors (peft's `hotswap_adapter_from_state_dict`) instead of
injecting new modules. `activate` turns LoRA compute on, the request's slots at its scales and
every other slot at scale 0: every active slot computes its branch on every projection it covers
(+103% of a base request's compute for one LoRA on an H200). A request with no adapters runs with
LoRA disabled, so its image is bit-identical to the bare base model. The default mode, merge,
does without slots (deployments/lora_bank.py); these stay selectable and are the baseline
`benchmarks/lora_overhead.py` compares it against.

Why scalings are set here rather than with `set_adapters`: peft's `set_scale` multiplies the weight
by the module's stored `lora_alpha / r`, which a hotswap does not update (it only rewrites
`scaling`). After swapping in an adapter whose alpha/rank differs from the placeholder's,
`set_adapters` would silently drop that ratio. So the scaling each module has right after the swap
(the adapter's own alpha/rank) is kept as the slot's unit scaling, and a request's weight
multiplies it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.hotswap import hotswap_adapter_from_state_dict

from deployments.errors import ModelLoadError, RequestError
from deployments.lora_format import check_fits, slot_keys

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def slot_target_modules(unet: torch.nn.Module, targets: tuple[str, ...] = DEFAULT_TARGETS) -> list[str]:
    """Module paths of the attention projections the slots cover."""
    names = []
    for name, _ in unet.named_modules():
        for target in targets:
            parent = name[: -len(target) - 1] if name.endswith("." + target) else ""
            if parent.rsplit(".", 1)[-1] in ("attn1", "attn2"):
                names.append(name)
    return names


def zero_adapter(unet: torch.nn.Module, modules: list[str], rank: int) -> dict[str, torch.Tensor]:
    lookup = dict(unet.named_modules())
    state = {}
    for name in modules:
        layer = lookup[name]
        state[f"unet.{name}.lora_A.weight"] = torch.zeros(rank, layer.in_features)
        state[f"unet.{name}.lora_B.weight"] = torch.zeros(layer.out_features, rank)
    return state


class LoraSlots:
    def __init__(self, pipe, num_slots: int, max_rank: int):
        self.pipe = pipe
        self.names = [f"slot{i}" for i in range(num_slots)]
        self.holding: list[str | None] = [None] * num_slots
        self._last_used = [0] * num_slots
        self._clock = itertools.count(1)
        self.swaps = 0
        self.max_rank = max_rank
        self._modules = slot_target_modules(pipe.unet)
        if not self._modules:
            raise ValueError("the UNet has no attention projections to put LoRA slots on")
        self._covered = set(self._modules)
        for name in self.names:
            self._allocate(name)
        self._finish_allocation()
        pipe.disable_lora()
        self._enabled = False

    def _allocate(self, name: str) -> None:
        # A fresh zero adapter per slot: peft adopts these tensors as the slot's parameters
        # without copying, so slots sharing one placeholder would share storage and a swap
        # into one slot would write through to the others.
        self.pipe.load_lora_weights(zero_adapter(self.pipe.unet, self._modules, self.max_rank),
                                    adapter_name=name)

    def _finish_allocation(self) -> None:
        """Make every slot active and record each slot's unit scalings."""
        self.pipe.set_adapters(self.names, adapter_weights=[1.0] * len(self.names))
        named = [(n, m) for n, m in self.pipe.unet.named_modules() if isinstance(m, LoraLayer)]
        self._layers = [m for _, m in named]
        self._layer_index = {n: i for i, (n, _) in enumerate(named)}
        self._unit = {name: self._current_scalings(name) for name in self.names}

    def _current_scalings(self, slot: str) -> list[float]:
        return [float(layer.scaling[slot]) for layer in self._layers]

    def reserved_bytes(self) -> int:
        """Device bytes beyond the pipeline's modules: none, the slots are UNet parameters."""
        return 0

    def to(self, device) -> None:
        """Nothing to move: the slots move with the UNet."""

    def missing(self, adapter_ids: list[str]) -> list[str]:
        return [a for a in adapter_ids if a not in self.holding]

    def activate(self, loras: list[tuple[str, float]], weights: Mapping[str, dict]) -> int:
        """Make exactly `loras` (id, scale) active; returns how many adapters were swapped in.

        `weights` maps every id that `missing()` reported to a prepared adapter
        (lora_format.prepare_adapter: peft-layout tensors and their LoraConfig). Raises ModelLoadError naming
        the adapter when its weights do not fit the slots (other modules, rank above the maximum).
        """
        if not loras:
            self._set_lora_compute(False)
            return 0
        assigned, swapped = self._place(loras, weights)
        scales = [0.0] * len(self.names)
        for adapter_id, scale in loras:
            scales[assigned[adapter_id]] = scale
        for slot, name in enumerate(self.names):
            for layer, unit in zip(self._layers, self._unit[name]):
                layer.scaling[name] = unit * scales[slot]
        self._set_lora_compute(True)
        return swapped

    def _set_lora_compute(self, on: bool) -> None:
        if on != self._enabled:
            (self.pipe.enable_lora if on else self.pipe.disable_lora)()
            self._enabled = on

    def _place(self, loras: list[tuple[str, float]],
               weights: Mapping[str, dict]) -> tuple[dict[str, int], int]:
        """Slots for `loras`, swapping in those not resident (least recently used slots first);
        ({adapter id: slot index}, adapters swapped)."""
        if len(loras) > len(self.names):
            raise RequestError("loras", f"at most {len(self.names)} adapters per request")
        wanted = [a for a, _ in loras]
        assigned: dict[str, int] = {a: self.holding.index(a) for a in wanted if a in self.holding}
        free = sorted((i for i in range(len(self.names)) if i not in assigned.values()),
                      key=lambda i: (self.holding[i] is not None, self._last_used[i]))
        swapped = 0
        for adapter_id in wanted:
            if adapter_id in assigned:
                continue
            slot = free.pop(0)
            self._swap_in(slot, adapter_id, weights[adapter_id])
            assigned[adapter_id] = slot
            swapped += 1
        for adapter_id in wanted:
            self._last_used[assigned[adapter_id]] = next(self._clock)
        return assigned, swapped

    def check_fits(self, adapter_id: str, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Raise ModelLoadError naming the adapter unless it fits the slots (modules, rank)."""
        check_fits(adapter_id, state_dict, self._covered, self.max_rank)

    def _swap_in(self, slot: int, adapter_id: str, weights: dict) -> None:
        name = self.names[slot]
        self.check_fits(adapter_id, weights["state_dict"])
        # The slot is marked empty first: if the swap fails half-way its tensors are in an
        # unknown state, and an empty slot is never reused without a fresh swap.
        self.holding[slot] = None
        try:
            hotswap_adapter_from_state_dict(self.pipe.unet, slot_keys(weights["state_dict"], name),
                                            adapter_name=name, config=weights["config"])
        except Exception as exc:  # peft raises RuntimeError/ValueError/NotImplementedError
            # peft keeps the slot's adapter registered; its tensors may be half-copied, which is
            # why the slot is marked empty above: the next swap into it rewrites every tensor.
            raise ModelLoadError(adapter_id, f"cannot hotswap into a LoRA slot: {exc}") from exc
        self._unit[name] = self._current_scalings(name)
        self.holding[slot] = adapter_id
        self.swaps += 1
