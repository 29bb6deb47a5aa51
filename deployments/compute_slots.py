"""Compute slots: at most k BaseModel replicas on one machine run a pipeline at once.

Replicas that share a machine's processors (the 2-core demo's four) or one GPU (fractional
``num_gpus``) time-share it when more of them compute than it has room for: every job there
stretches, and past the core count more jobs add no throughput (measured on the 2-core demo: x2.1
and x2.5-2.9 at 3 and 4 busy replicas, ``t2i profile``'s ``host_stretch``). With
``control.compute_slots`` k > 0 a replica takes one of the machine's k slots for a request's
compute (after its loads) and gives it back when the pipeline returns; a request that finds all
k taken waits, and that wait counts as queueing (``queue_s``, and ``slot_s`` on its own). The
router already prices an idle replica on a machine computing ``host_slots`` requests as starting
when the soonest of them drains (``policies.routing``); the slots make that price true.

A slot is an exclusive lock on one of k files in a directory per machine and k
(``filelock``, ``fcntl.flock`` on Linux): the kernel drops a lock when its process dies, so a
replica that crashes never keeps a slot. Waiting polls every few milliseconds, not in a queue:
across processes no order is kept. The simulator's ``ClusterSpec.compute_slots`` is the same rule
(FIFO per machine there).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from filelock import FileLock, Timeout

POLL_S = 0.005  # between tries while every slot is taken: small beside a request's compute


def slots_dir(slots: int) -> Path:
    """The machine's slot files for ``slots`` slots (all replicas on a machine meet here)."""
    return Path(tempfile.gettempdir()) / "t2i-compute-slots" / f"of-{slots}"


class ComputeSlots:
    """``slots`` machine-wide slots; ``hold()`` waits for one and keeps it for a ``with`` block."""

    def __init__(self, slots: int, directory: Path | None = None, poll_s: float = POLL_S) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"compute slots must be a whole number >= 1, got {slots!r}")
        self.slots = slots
        self.directory = Path(directory) if directory is not None else slots_dir(slots)
        self.directory.mkdir(parents=True, exist_ok=True)
        # thread_local off: a slot is taken on the event loop and given back after the pipeline's
        # worker thread returns, possibly from another thread
        self._locks = [FileLock(self.directory / f"slot-{i}.lock", thread_local=False)
                       for i in range(slots)]
        self._poll_s = poll_s

    def try_take(self) -> FileLock | None:
        """A free slot, now taken, or None when all ``slots`` are held (by any process)."""
        for lock in self._locks:
            if lock.is_locked:  # this process holds it already (another request here)
                continue
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            return lock
        return None

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[float]:
        """Wait for a slot (the event loop stays free meanwhile) and yield the seconds waited."""
        started = time.perf_counter()
        lock = self.try_take()
        while lock is None:
            await asyncio.sleep(self._poll_s)
            lock = self.try_take()
        try:
            yield time.perf_counter() - started
        finally:
            lock.release()
