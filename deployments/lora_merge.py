"""Adding LoRA updates into attention weights, and taking them out again bit-exactly.

An active hotswap slot computes its LoRA branch on every attention projection it covers, whatever
the adapter: on an H200 one LoRA cost +103% of a base request's compute, three LoRAs +153%
(/work/shared/data/gpu/README.md). Adding scale x B @ A into each patched projection's base weight
(3.1 ms for rank 64 on SD 1.5) and running the plain projections brings a LoRA request back to the
base model's speed; deployments/lora_bank.py does that for `cache.lora_mode: merge`.

Taking the adapters out again by subtracting would drift in float16 over thousands of requests,
so each patched projection keeps a pristine copy of its base weight and is restored by a copy
(1.7 ms on SD 1.5): the base image stays bit-exact. The copy is a non-persistent buffer on the
projection (`PRISTINE`), made the first time that projection is patched, or ahead of any merge
for every covered projection by `keep_pristine` (what the bank does at load, so the model cache
measures a pipeline's size with its copies, 187 MB for SD 1.5). It moves with the pipeline when
the model cache moves it between device and host (`pipe.to`) and never reaches a state dict or a
saved model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

PRISTINE = "pristine_weight"


@dataclass(frozen=True)
class MergeTerm:
    """One adapter's update on one projection: `scale` x B @ A added into `base`'s weight."""

    base: torch.nn.Linear
    a: torch.Tensor  # (rank, in_features), on the weight's device and dtype
    b: torch.Tensor  # (out_features, rank)
    scale: float  # the request's scale x the adapter's scaling (alpha / r)


class WeightMerge:
    """The merged state of one UNet: which base weights differ from their pristine copies."""

    def __init__(self) -> None:
        self._patched: list[torch.nn.Module] = []  # base layers, in the order they were patched

    @property
    def active(self) -> bool:
        return bool(self._patched)

    def merge(self, terms: Iterable[MergeTerm]) -> int:
        """Add every term into its projection's base weight; returns the projections patched.

        Anything still merged is restored first, so merges never stack. A projection is recorded
        as patched before its weight changes, and a merge that fails half-way is restored before
        the error propagates."""
        self.restore()
        seen: set[int] = set()
        try:
            with torch.no_grad():
                for term in terms:
                    if id(term.base) not in seen:
                        seen.add(id(term.base))
                        keep_pristine([term.base])
                        self._patched.append(term.base)
                    term.base.weight.addmm_(term.b, term.a, alpha=term.scale)
        except BaseException:
            self.restore()
            raise
        return len(seen)

    def restore(self) -> None:
        """Copy every patched weight back from its pristine copy (bit-exact; no-op if none)."""
        with torch.no_grad():
            while self._patched:  # popped only once restored: a failed restore can be retried
                base = self._patched[-1]
                base.weight.copy_(getattr(base, PRISTINE))
                self._patched.pop()


def keep_pristine(base_layers: Iterable[torch.nn.Module]) -> None:
    """Make the pristine copy of every one of `base_layers` that has none yet."""
    with torch.no_grad():
        for base in base_layers:
            if getattr(base, PRISTINE, None) is None:
                base.register_buffer(PRISTINE, base.weight.detach().clone(), persistent=False)


def pristine_bytes(module: torch.nn.Module) -> int:
    """Bytes held by the pristine copies under `module` (0 before the first merge)."""
    return sum(buf.numel() * buf.element_size() for name, buf in module.named_buffers()
               if name.rsplit(".", 1)[-1] == PRISTINE)
