"""Compute slots (control.compute_slots): at most k holders across the machine's processes, a
waiter gets a slot when one frees, a holder that dies frees its slot, bad counts are refused."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import time

import pytest

from deployments.compute_slots import ComputeSlots


def _hold_and_log(directory: str, slots: int, log: str, hold_s: float) -> None:
    async def run() -> None:
        async with ComputeSlots(slots, directory).hold():
            with open(log, "a") as fh:  # one short line per write: appends do not interleave
                fh.write(f"in {time.time()}\n")
            await asyncio.sleep(hold_s)
            with open(log, "a") as fh:
                fh.write(f"out {time.time()}\n")

    asyncio.run(run())


def test_no_more_than_k_processes_hold_a_slot_at_once(tmp_path):
    log = tmp_path / "log"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hold_and_log, args=(str(tmp_path / "slots"), 2, str(log), 0.3)) for _ in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    events = sorted((float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines()))
    assert sum(1 for _, kind in events if kind == "in") == 5  # every one got a slot in the end
    at_once, most = 0, 0
    for _, kind in events:  # at one instant an entry sorts before an exit ("in" < "out"): overcounts only
        at_once += 1 if kind == "in" else -1
        most = max(most, at_once)
    assert most == 2  # five wanted one at once; two slots held them two at a time


def test_a_request_waits_for_a_slot_another_request_here_holds(tmp_path):
    slots = ComputeSlots(1, tmp_path)

    async def run() -> list[float]:
        waits = []

        async def one(hold_s: float) -> None:
            async with slots.hold() as waited:
                waits.append(waited)
                await asyncio.sleep(hold_s)

        await asyncio.gather(one(0.2), one(0.0))
        return waits

    waits = asyncio.run(run())
    assert waits[0] < 0.05 and waits[1] >= 0.18  # the second took the slot when the first gave it back
    assert slots.try_take() is not None  # and gave it back in turn


def _take_and_wait(directory: str, ready) -> None:
    held = ComputeSlots(1, directory).try_take()  # kept referenced: a collected lock is released
    assert held is not None
    ready.set()
    time.sleep(60)


def test_a_holder_that_dies_frees_its_slot(tmp_path):
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_take_and_wait, args=(str(tmp_path), ready))
    p.start()
    assert ready.wait(10)
    slots = ComputeSlots(1, tmp_path)
    assert slots.try_take() is None  # held by the other process
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert slots.try_take() is not None  # the kernel dropped the dead holder's lock


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_a_slot_count_that_is_not_a_whole_number_above_zero_is_refused(bad, tmp_path):
    with pytest.raises(ValueError, match="compute slots must be a whole number >= 1"):
        ComputeSlots(bad, tmp_path)
