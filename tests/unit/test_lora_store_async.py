"""LoRAStore reads off the event loop: a slow read never holds up a hit, one read per adapter
however many ask at once, and a failed or abandoned read leaves the store consistent."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from deployments.config import ServeConfig
from deployments.errors import ModelLoadError
from deployments.lora_store import LoRAStore

ADAPTERS = ("fast", "slow", "other")


def _config() -> ServeConfig:
    return ServeConfig(models=[{"id": "base", "kind": "base", "path": "base"},
                               *({"id": a, "kind": "lora", "path": f"lora/{a}"} for a in ADAPTERS)])


class ScriptedReader:
    """read_lora_file's signature; reads of the ids in `gated` block (in the worker thread) until
    `release` is set; ids in `broken` fail as a corrupt file does."""

    def __init__(self, gated: tuple[str, ...] = (), broken: tuple[str, ...] = ()):
        self.gated, self.broken = set(gated), set(broken)
        self.reading = threading.Event()
        self.release = threading.Event()
        self.calls: list[str] = []

    def __call__(self, adapter_id: str, source: str, max_rank: int, arch: str = "sd15") -> dict:
        self.calls.append(adapter_id)
        if adapter_id in self.gated:
            self.reading.set()
            # bounded: were the read on the loop, this would block it for 5 s, not forever
            self.release.wait(5.0)
        if adapter_id in self.broken:
            raise ModelLoadError(adapter_id, "cannot read: truncated safetensors header")
        return {"state_dict": {"w": torch.zeros(16)}, "config": None, "rank": 1}


def test_a_hit_completes_while_another_adapter_is_being_read():
    reader = ScriptedReader(gated=("slow",))

    async def main():
        store = LoRAStore(_config(), reader=reader)
        await store.get("fast")
        slow = asyncio.ensure_future(store.get("slow"))
        assert await asyncio.to_thread(reader.reading.wait, 5.0)
        hit = await asyncio.wait_for(store.get("fast"), 2.0)
        assert hit["hit"] and not slow.done(), "the hit waited for the slow read"
        assert (await store.stats())["reading"] == ["slow"]
        reader.release.set()
        assert not (await slow)["hit"]
        assert (await store.stats())["reading"] == []

    asyncio.run(main())


def test_concurrent_gets_of_one_adapter_read_it_once():
    reader = ScriptedReader(gated=("slow",))

    async def main():
        store = LoRAStore(_config(), reader=reader)
        gets = [asyncio.ensure_future(store.get("slow")) for _ in range(3)]
        assert await asyncio.to_thread(reader.reading.wait, 5.0)
        reader.release.set()
        replies = await asyncio.gather(*gets)
        assert reader.calls == ["slow"]
        assert [r["hit"] for r in replies] == [False, True, True]
        assert all(r["ref"] is replies[0]["ref"] for r in replies)
        stats = await store.stats()
        assert (stats["hits"], stats["misses"], stats["adapters"]) == (2, 1, ["slow"])

    asyncio.run(main())


def test_a_failed_read_fails_every_waiter_and_is_read_again_next_time():
    reader = ScriptedReader(gated=("slow",), broken=("slow",))

    async def main():
        store = LoRAStore(_config(), reader=reader)
        gets = [asyncio.ensure_future(store.get("slow")) for _ in range(2)]
        assert await asyncio.to_thread(reader.reading.wait, 5.0)
        reader.release.set()
        results = await asyncio.gather(*gets, return_exceptions=True)
        assert all(isinstance(r, ModelLoadError) and "'slow'" in str(r) for r in results)
        assert (await store.stats())["adapters"] == []
        with pytest.raises(ModelLoadError):
            await store.get("slow")
        assert reader.calls == ["slow", "slow"]  # a failure is not cached
        assert not (await store.get("fast"))["hit"]  # and the store keeps serving

    asyncio.run(main())


def test_a_caller_that_gives_up_cancels_neither_the_read_nor_the_others():
    reader = ScriptedReader(gated=("slow",))

    async def main():
        store = LoRAStore(_config(), reader=reader)
        first = asyncio.ensure_future(store.get("slow"))
        second = asyncio.ensure_future(store.get("slow"))
        assert await asyncio.to_thread(reader.reading.wait, 5.0)
        first.cancel()
        reader.release.set()
        assert (await second)["bytes"] == 64
        assert first.cancelled() and (await store.stats())["adapters"] == ["slow"]
        assert (await store.get("slow"))["hit"] and reader.calls == ["slow"]

    asyncio.run(main())


def test_an_unknown_adapter_lists_the_registered_ones():
    async def main():
        with pytest.raises(ValueError, match=r"unknown LoRA id 'nope'; choose one of \['fast'"):
            await LoRAStore(_config(), reader=ScriptedReader()).get("nope")

    asyncio.run(main())
