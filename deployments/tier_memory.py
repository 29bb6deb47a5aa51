"""One cache tier's memory for a stateful eviction policy, as the live model cache reports to it.

``policies.eviction.EvictionMemory`` wants each entry's insert and eviction exactly once, and a
demand load's events in one order: its miss, the evictions that made its room, its insert. The
model cache reaches an eviction by several paths (a demotion, a drop when the host tier is full,
a failed load or move) and makes room over several awaits, so this wrapper keeps the ids the
memory holds (an eviction of an id it does not hold is no event) and can hold back the evictions
made for a load until the load's miss is reported (``defer`` / ``flush``).
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.eviction import EvictionMemory


class TierMemory:
    """``memory`` keyed by model id, with the set of ids it holds."""

    def __init__(self, memory: EvictionMemory) -> None:
        self.memory = memory
        self.held: set[str] = set()
        self._deferred: list[str] | None = None  # evictions held back for a load's miss

    def hit(self, model_id: str, now: float) -> None:
        if model_id in self.held:
            self.memory.on_hit(model_id, now)

    def insert(self, model_id: str, kind: int, size: float, cost: float | None, now: float,
               prefetch: bool) -> None:
        if model_id not in self.held:
            self.held.add(model_id)
            self.memory.on_insert(model_id, kind, size, cost, now, prefetch=prefetch)

    def evict(self, model_id: str, now: float) -> None:
        if model_id in self.held:
            self.held.discard(model_id)
            if self._deferred is not None:
                self._deferred.append(model_id)
            else:
                self.memory.on_evict(model_id, now)

    def defer(self) -> None:
        """Hold back evictions until ``flush`` (the room for a load is being made)."""
        self._deferred = []

    def flush(self, missed: str | None, now: float) -> None:
        """Report ``missed``'s miss (None: a prefetch, or a load that did not start), then the
        evictions held back; the caller reports the insert next."""
        deferred, self._deferred = self._deferred or [], None
        if missed is not None:
            self.memory.on_miss(missed, now)
        for model_id in deferred:
            self.memory.on_evict(model_id, now)

    def victim_order(self, model_ids: Sequence[str]) -> list[str]:
        return self.memory.victim_order(model_ids)
