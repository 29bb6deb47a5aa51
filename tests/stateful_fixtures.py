"""A small stateful eviction policy for the cache tests: first in, first out by insertion, with a
memory that checks the event protocol as it goes and logs every event.

FIFO ignores hits, so its victim differs from LRU's as soon as the oldest entry was used again:
a cache that took its order from the view instead of ``memory.victim_order`` fails the tests.
Registered by the registry's escape hatch: ``"tests.stateful_fixtures:FifoEviction"``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from policies.eviction import EvictionMemory, StatefulEviction

FIFO = "tests.stateful_fixtures:FifoEviction"


class ProtocolError(AssertionError):
    """The cache reported an event out of the documented order."""


class LoggingFifoMemory(EvictionMemory):
    """Insertion-ordered memory that enforces the protocol: a hit or an eviction only of a resident
    key; a demand insert only after its miss (with ``strict``, right after it, only evictions in
    between; a concurrent live cache may report other keys' events there, so its tests turn
    ``strict`` off); a prefetch insert with no pending miss; the resident sizes never over
    ``capacity``. ``log`` holds ``(event, key[, prefetch])``; ``asked`` every key list passed to
    ``victim_order``."""

    strict = True  # a demand insert comes right after its miss, or never (a concurrent cache: False)

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.resident: dict[Hashable, float] = {}  # key -> size, in insertion order
        self.log: list[tuple] = []
        self.asked: list[list[Hashable]] = []
        self.inserts = self.evictions = 0
        self._pending: set[Hashable] = set()  # demand misses not inserted yet

    def on_hit(self, key: Hashable, now: float) -> None:
        if key not in self.resident:
            raise ProtocolError(f"hit on {key!r}, which is not resident")
        if self.strict:  # a miss not inserted by now never will be (it did not fit)
            self._pending.clear()
        self.log.append(("hit", key))

    def on_miss(self, key: Hashable, now: float) -> None:
        if key in self.resident:
            raise ProtocolError(f"miss on {key!r}, which is resident")
        if self.strict:  # a miss not inserted by now never will be (it did not fit)
            self._pending.clear()
        self._pending.add(key)
        self.log.append(("miss", key))

    def on_insert(self, key: Hashable, kind: int, size: float, cost: float | None, now: float,
                  prefetch: bool = False) -> None:
        if key in self.resident:
            raise ProtocolError(f"insert of {key!r}, which is resident")
        if not prefetch and key not in self._pending:
            raise ProtocolError(f"demand insert of {key!r} without its miss (pending {self._pending!r})")
        if prefetch and key in self._pending:
            raise ProtocolError(f"prefetch insert of {key!r} after its demand miss")
        if size < 0 or sum(self.resident.values()) + size > self.capacity * (1 + 1e-9):
            raise ProtocolError(f"insert of {key!r} ({size}) overfills {self.capacity}")
        self._pending.discard(key)
        self.resident[key] = size
        self.inserts += 1
        self.log.append(("insert", key, prefetch))

    def on_evict(self, key: Hashable, now: float) -> None:
        if key not in self.resident:
            raise ProtocolError(f"eviction of {key!r}, which is not resident")
        del self.resident[key]
        self.evictions += 1
        self.log.append(("evict", key))

    def victim_order(self, keys: Sequence[Hashable]) -> list[Hashable]:
        keys = list(keys)
        if not set(keys) <= self.resident.keys() or len(set(keys)) != len(keys):
            raise ProtocolError(f"victim_order asked about {keys!r}; resident {list(self.resident)!r}")
        self.asked.append(keys)
        asked = set(keys)
        return [k for k in self.resident if k in asked]  # oldest insert first

    def events(self, *kinds: str) -> list[tuple]:
        return [e for e in self.log if e[0] in kinds] if kinds else list(self.log)


class FifoEviction(StatefulEviction):
    """First inserted, first evicted; hits do not matter."""

    name = "test-fifo"

    def new_memory(self, capacity: float) -> LoggingFifoMemory:
        return LoggingFifoMemory(capacity)
