"""A BaseModel replica's host tier for LoRA adapters (coordinator set).

A pipeline's LoRA slots hold a few adapters (`cache.lora_slots`); an adapter a request needs that
is not in a slot is fetched from the LoRAStore actor: a Ray call and an object transfer, tens of
milliseconds on a loaded host, paid again every time the adapter comes back. This tier keeps the
prepared tensors of the adapters this replica fetched, under a byte budget
(`control.adapter_host_bytes`), so a returning adapter costs only its slot swap (milliseconds).
It is the adapters' counterpart of the model cache's host tier, and what the simulator's workers
model (a LoRA stays in a worker's cache once loaded, evicted by the same policy).

Which adapter leaves is decided by the replica cache's eviction policy (`control.eviction`) driven
as a `policies.shadow.ShadowCache` (keys and sizes; this class holds the tensors of exactly the
keys it holds); a stateless policy (`lru`, `lfu`) orders victims by recency here. Everything runs
on the replica's event loop.
"""

from __future__ import annotations

from collections import OrderedDict

from policies.eviction import is_stateful
from policies.shadow import ShadowCache
from policies.snapshot import LORA


class AdapterTier:
    """Prepared adapter tensors by id, under `budget_bytes` (0: off, nothing is kept)."""

    def __init__(self, budget_bytes: int, policy, clock) -> None:
        self.budget = int(budget_bytes)
        self._clock = clock
        self._shadow = ShadowCache(policy, self.budget) if self.budget > 0 and is_stateful(policy) else None
        self._tensors: OrderedDict[str, dict] = OrderedDict()  # recency order, oldest first
        self._sizes: dict[str, int] = {}
        self.hits = self.misses = 0

    def take(self, adapter_ids: list[str]) -> tuple[dict, list[str]]:
        """({id: tensors} held here, ids to fetch); a hit or a miss per id, for the policy."""
        found, missing = {}, []
        for a in adapter_ids:
            tensors = self._tensors.get(a)
            if tensors is None:
                missing.append(a)
                self.misses += 1
                continue
            found[a] = tensors
            self.hits += 1
            self._tensors.move_to_end(a)
            if self._shadow is not None:
                self._shadow.access(a, LORA, self._sizes[a], None, self._clock())
        return found, missing

    def put(self, adapter_id: str, tensors: dict, size_bytes: int, fetch_s: float) -> None:
        """Keep a fetched adapter (an adapter over the whole budget is not kept)."""
        if self.budget <= 0 or adapter_id in self._tensors or not 0 < size_bytes <= self.budget:
            return
        if self._shadow is not None:
            self._shadow.access(adapter_id, LORA, size_bytes, fetch_s, self._clock())
            for gone in [a for a in self._tensors if a not in self._shadow]:
                self._drop(gone)
        else:
            while self._tensors and sum(self._sizes.values()) + size_bytes > self.budget:
                self._drop(next(iter(self._tensors)))
        self._tensors[adapter_id] = tensors
        self._sizes[adapter_id] = int(size_bytes)

    def _drop(self, adapter_id: str) -> None:
        del self._tensors[adapter_id]
        del self._sizes[adapter_id]

    def held(self) -> list[str]:
        return list(self._tensors)

    def used_bytes(self) -> int:
        return sum(self._sizes.values())
