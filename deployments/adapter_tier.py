"""A BaseModel replica's host tier for LoRA adapters (coordinator set).

A pipeline's LoRA slots hold a few adapters (`cache.lora_slots`); an adapter a request needs that
is not in a slot is fetched from the LoRAStore actor: a Ray call and an object transfer, tens of
milliseconds on a loaded host, paid again every time the adapter comes back. This tier keeps the
prepared tensors of the adapters this replica fetched, under a byte budget
(`control.adapter_host_bytes`), so a returning adapter costs only its slot swap (milliseconds).
It is the adapters' counterpart of the model cache's host tier, and what the simulator's workers
model (a LoRA stays in a worker's cache once loaded, evicted by the same policy).

Membership, sizes and victims are a `policies.shadow.ShadowCache` driving the replica cache's
eviction policy (`control.eviction`; a policy without memory, such as `lru`, cannot drive one, and
the tier then runs the project's default, `policies.defaults.DEFAULT_EVICTION`). This class only
keeps the tensors of exactly the keys the shadow holds. Everything runs on the replica's event loop.
"""

from __future__ import annotations

from policies.defaults import DEFAULT_EVICTION
from policies.eviction import EVICTION, is_stateful
from policies.shadow import ShadowCache
from policies.snapshot import LORA


class AdapterTier:
    """Prepared adapter tensors by id, under `budget_bytes` (0: off, nothing is kept)."""

    def __init__(self, budget_bytes: int, policy, clock) -> None:
        self.budget = int(budget_bytes)
        self._clock = clock
        if not is_stateful(policy):
            policy = EVICTION.create(DEFAULT_EVICTION)
        self._shadow = ShadowCache(policy, self.budget) if self.budget > 0 else None
        self._tensors: dict[str, dict] = {}
        self.hits = self.misses = 0

    def take(self, adapter_ids: list[str]) -> tuple[dict, list[str]]:
        """({id: tensors} held here, ids to fetch); a hit per id held, for the policy (a miss
        reaches it with `put`)."""
        found, missing = {}, []
        for a in adapter_ids:
            tensors = self._tensors.get(a)
            if tensors is None:
                missing.append(a)
                continue
            found[a] = tensors
            self._shadow.access(a, LORA, 1.0, None, self._clock())  # a hit: the size is not read
        self.hits += len(found)
        self.misses += len(missing)
        return found, missing

    def put(self, adapter_id: str, tensors: dict, size_bytes: int, fetch_s: float) -> None:
        """Keep a fetched adapter (one over the whole budget, or of unknown size, is not kept)."""
        if self._shadow is None or adapter_id in self._tensors or size_bytes <= 0:
            return
        self._shadow.access(adapter_id, LORA, size_bytes, fetch_s, self._clock())
        for gone in [a for a in self._tensors if a not in self._shadow]:
            del self._tensors[gone]
        if adapter_id in self._shadow:  # admitted
            self._tensors[adapter_id] = tensors

    def held(self) -> list[str]:
        return list(self._tensors)

    def used_bytes(self) -> int:
        return int(self._shadow.used) if self._shadow is not None else 0
