"""A pipeline's LoRAs under `cache.lora_mode: merge`: prepared adapters kept on the device, merged
into the attention weights for the requests that use them.

No peft modules are injected and no zero adapters are built at load (the hotswap slots' set-up
cost 0.72 s of a 1.38 s SD 1.5 load on an H200, /work/shared/data/gpu/README.md). Set-up is one
device copy of each covered projection's weight (the pristine copies, deployments/lora_merge.py).

- `stage` makes a request's adapters resident: each one's A and B matrices copied to the device
  in the weights' dtype, with the scaling peft would give it (alpha / r, or alpha / sqrt(r) with
  rsLoRA; rank and alpha patterns matched per module as peft matches them). At most `capacity`
  adapters are resident; the least recently used one makes room.
- `merge` adds scale x scaling x B @ A of each of the request's adapters into the weights.
  The merge stays in place after the request: the next request with the same adapters and
  scales (a hot base+LoRA pair) pays no switch at all. A request with other adapters, or none,
  first restores every patched weight from its pristine copy (bit-exact: no drift over any number
  of switches).

The attribute names `holding`, `swaps` and `missing()` are LoraSlots' (the replica reports them).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from peft.utils.other import get_pattern_key

from deployments.errors import ModelLoadError, RequestError
from deployments.lora_format import check_fits
from deployments.lora_merge import MergeTerm, WeightMerge, keep_pristine
from deployments.lora_slots import slot_target_modules


@dataclass
class _Resident:
    """One adapter on the device: per patched projection (A, B, peft's scaling)."""

    adapter_id: str
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    last_used: int = 0


class LoraBank:
    def __init__(self, unet: torch.nn.Module, capacity: int, max_rank: int):
        self.unet = unet
        self.capacity = capacity
        self.max_rank = max_rank
        self.swaps = 0
        self._clock = itertools.count(1)
        lookup = dict(unet.named_modules())
        self._layers = {name: lookup[name] for name in slot_target_modules(unet)}
        if not self._layers:
            raise ValueError("the UNet has no attention projections to merge LoRAs into")
        self._resident: dict[str, _Resident] = {}
        self._merge = WeightMerge()
        self._merged: tuple = ()  # the (adapter id, scale) pairs merged in now
        keep_pristine(self._layers.values())

    @property
    def holding(self) -> list[str]:
        return list(self._resident)

    @property
    def names(self) -> list[str]:  # one per adapter a request may use, as LoraSlots has
        return [f"bank{i}" for i in range(self.capacity)]

    @property
    def merged(self) -> tuple:
        """The (adapter id, scale) pairs merged into the weights now."""
        return self._merged

    def missing(self, adapter_ids: list[str]) -> list[str]:
        return [a for a in adapter_ids if a not in self._resident]

    def reserved_bytes(self) -> int:
        """Device bytes the resident adapters may take at most (`capacity` adapters of
        `max_rank` on every covered projection): what the model cache counts for the bank."""
        per_rank = sum(layer.in_features + layer.out_features for layer in self._layers.values())
        weight = next(iter(self._layers.values())).weight
        return self.capacity * self.max_rank * per_rank * weight.element_size()

    def check_fits(self, adapter_id: str, state_dict: Mapping[str, torch.Tensor]) -> None:
        check_fits(adapter_id, state_dict, self._layers.keys(), self.max_rank)

    def stage(self, loras: list[tuple[str, float]], weights: Mapping[str, dict]) -> int:
        """Make `loras`' adapters resident (from `weights`, prepared adapters, for those
        `missing()` named); returns how many were copied to the device."""
        if len(loras) > self.capacity:
            raise RequestError("loras", f"at most {self.capacity} adapters per request")
        wanted = [a for a, _ in loras]
        copied = 0
        for adapter_id in wanted:
            if adapter_id not in self._resident:
                if adapter_id not in weights:
                    raise RequestError("loras", f"adapter {adapter_id!r} is neither on the device "
                                       "nor among the weights passed")
                self._make_room(keep=wanted)
                self._resident[adapter_id] = self._to_device(adapter_id, weights[adapter_id])
                self.swaps += 1
                copied += 1
            self._resident[adapter_id].last_used = next(self._clock)
        return copied

    def merge(self, loras: list[tuple[str, float]]) -> tuple[float, float]:
        """Leave exactly `loras` (staged) merged into the weights. Returns (unmerge_s, merge_s):
        the seconds spent taking the previous request's adapters out and putting these in, both
        measured to the device's end of the work (0.0, 0.0 when they are the same ones, left
        merged)."""
        key = tuple((a, float(s)) for a, s in loras if s != 0.0)
        if key == self._merged:
            return 0.0, 0.0
        terms = []
        for adapter_id, scale in key:
            resident = self._resident.get(adapter_id)
            if resident is None:
                raise RequestError("loras", f"adapter {adapter_id!r} is not on the device; stage it first")
            terms += [MergeTerm(self._layers[module], a, b, scale * scaling)
                      for module, (a, b, scaling) in resident.factors.items()]
        unmerge_s, restored_at = self._restore()
        started = 0.0
        if terms:  # from the restore's synchronised end when there was one: no second sync
            started = restored_at if restored_at is not None else _now_synced(self.unet)
        self._merge.merge(terms)  # restores itself when it fails half-way
        self._merged = key
        return unmerge_s, (_now_synced(self.unet) - started if terms else 0.0)

    def restore(self) -> float:
        """Every patched weight back to its pristine copy; returns the seconds it took (0.0 when
        nothing was merged)."""
        return self._restore()[0]

    def _restore(self) -> tuple[float, float | None]:
        """restore(), also returning the synchronised time it ended (None: nothing was merged)."""
        if not self._merge.active:
            self._merged = ()
            return 0.0, None
        started = _now_synced(self.unet)
        self._merge.restore()
        self._merged = ()
        ended = _now_synced(self.unet)
        return ended - started, ended

    def to(self, device) -> None:
        """Move the resident adapters with their pipeline (the model cache's tier moves)."""
        for resident in self._resident.values():
            resident.factors = {m: (a.to(device), b.to(device), s) for m, (a, b, s) in resident.factors.items()}

    def _make_room(self, keep: list[str]) -> None:
        while len(self._resident) >= self.capacity:
            victim = min((r for r in self._resident.values() if r.adapter_id not in keep),
                         key=lambda r: r.last_used)
            if any(a == victim.adapter_id for a, _ in self._merged):
                self.restore()  # its update is in the weights: take it out with it
            del self._resident[victim.adapter_id]

    def _to_device(self, adapter_id: str, prepared: dict) -> _Resident:
        state, config = prepared["state_dict"], prepared["config"]
        self.check_fits(adapter_id, state)
        factors = {}
        for key, a in state.items():
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0]
            b = state.get(key.replace(".lora_A.", ".lora_B."))
            if b is None:
                raise ModelLoadError(adapter_id, f"{module!r} has lora_A but no lora_B")
            rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
            alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module),
                                             config.lora_alpha)
            scaling = alpha / (math.sqrt(rank) if config.use_rslora else rank)
            weight = self._layers[module].weight
            # copied as stored (asynchronous from pinned memory), cast on the device
            factors[module] = (a.to(weight.device, non_blocking=True).to(weight.dtype),
                               b.to(weight.device, non_blocking=True).to(weight.dtype), scaling)
        return _Resident(adapter_id, factors)


def _now_synced(module: torch.nn.Module) -> float:
    """perf_counter after the module's device finished its queued work (restores and merges are
    async on a GPU)."""
    device = next(module.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
