"""A shadow cache: a stateful eviction policy's memory driven as a standalone cache.

It holds keys and sizes only, no values: enough to count the hits and misses a policy would
score on an access sequence (the tests' miss counts, and shadow caches inside an adaptive
policy that compares candidates on the live request stream). ``access`` is the hot path: plain
dicts and floats, one ``victim_order`` call per miss that must evict.
"""

from __future__ import annotations

from collections.abc import Hashable

from policies.eviction import EvictionMemory, StatefulEviction, check_capacity
from policies.snapshot import LORA


class ShadowCache:
    """Keys with sizes under a capacity, evicting in the order ``policy``'s memory gives.

    Events reach the memory in the order ``EvictionMemory`` documents: a hit, ``on_hit``; a miss,
    ``on_miss``, then ``on_evict`` per victim, then ``on_insert``. An entry larger than the whole
    capacity is not admitted: it counts as a miss (the memory sees ``on_miss``), evicts nothing
    and is not inserted, as a cache that cannot hold it would serve it uncached.
    """

    __slots__ = ("policy", "memory", "capacity", "used", "hits", "misses", "_size", "_slack")

    def __init__(self, policy: StatefulEviction, capacity: float) -> None:
        self.policy = policy
        self.capacity = check_capacity(capacity)
        self.memory: EvictionMemory = policy.new_memory(self.capacity)
        self.used = 0.0  # sum of resident sizes
        self.hits = 0
        self.misses = 0
        self._size: dict[Hashable, float] = {}
        self._slack = self.capacity * (1 + 1e-9)  # float sums of fractional sizes drift

    def __contains__(self, key: Hashable) -> bool:
        return key in self._size

    def __len__(self) -> int:
        return len(self._size)

    def keys(self) -> list[Hashable]:
        return list(self._size)

    def access(self, key: Hashable, kind: int = LORA, size: float = 1.0, cost: float | None = None,
               now: float = 0.0) -> bool:
        """Serve a demand access; True on a hit."""
        if key in self._size:
            self.hits += 1
            self.memory.on_hit(key, now)
            return True
        self.misses += 1
        self.memory.on_miss(key, now)
        self._admit(key, kind, size, cost, now, False)
        return False

    def prefetch(self, key: Hashable, kind: int = LORA, size: float = 1.0, cost: float | None = None,
                 now: float = 0.0) -> bool:
        """Load ``key`` ahead of demand (no hit or miss counted); True if it was loaded now."""
        if key in self._size:
            return False
        return self._admit(key, kind, size, cost, now, True)

    def discard(self, key: Hashable, now: float = 0.0) -> bool:
        """Evict ``key`` outside a miss (a store clearing a device, a pinned victim skipped):
        the memory sees ``on_evict``. True if it was resident."""
        size = self._size.pop(key, None)
        if size is None:
            return False
        self.used = self.used - size if self._size else 0.0
        self.memory.on_evict(key, now)
        return True

    def _admit(self, key: Hashable, kind: int, size: float, cost: float | None, now: float,
               prefetch: bool) -> bool:
        if not size > 0:
            raise ValueError(f"entry {key!r} has size {size}; sizes must be > 0")
        if size > self._slack:
            return False
        memory, sizes = self.memory, self._size
        if self.used + size > self._slack:
            for victim in memory.victim_order(list(sizes)):
                self.used -= sizes.pop(victim)
                memory.on_evict(victim, now)
                if self.used + size <= self._slack:
                    break
            if not sizes:
                self.used = 0.0
        sizes[key] = size
        self.used += size
        memory.on_insert(key, kind, size, cost, now, prefetch)
        return True
