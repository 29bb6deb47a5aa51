"""The live caches with a stateful eviction policy: the replica's ModelCache (one memory per tier),
the LoRA store and the ControlNet deployment's cache. Each reports hits, misses, evictions,
prefetches and drops in the documented order and evicts in the memory's order (FIFO here, which
LRU would not choose); budgets hold; in-use entries are never offered, pinned ones go last."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.model_cache import ModelCache
from policies.eviction import EVICTION
from policies.snapshot import GPU, HOST

from tests.stateful_fixtures import FIFO, LoggingFifoMemory
from tests.unit.test_model_cache import assert_within_budgets, make, random_models, random_operation


def memories(cache: ModelCache) -> tuple[LoggingFifoMemory, LoggingFifoMemory | None]:
    host = cache.memories.get(HOST)
    return cache.memories[GPU].memory, host.memory if host is not None else None


def check_tiers(cache: ModelCache) -> None:
    """At rest (no load or move under way) each tier's memory holds exactly that tier's entries."""
    gpu, host = memories(cache)
    tiers = cache.tiers()
    assert set(gpu.resident) == {m for m, t in tiers.items() if t == GPU}
    if host is not None:
        assert set(host.resident) == {m for m, t in tiers.items() if t == HOST}


async def get(cache: ModelCache, *models: str) -> None:
    for m in models:
        cache.release(await cache.acquire([m]))


def test_gpu_events_in_the_documented_order_and_victims_first_in_first_out():
    async def main():
        cache, _ = make({"a": 100, "b": 100, "c": 100}, gpu=200, policy=FIFO)
        assert HOST not in cache.memories  # no host tier, no host memory
        await get(cache, "a", "b", "a", "c")  # LRU would evict b (a was just used); FIFO takes a
        gpu, _ = memories(cache)
        assert gpu.log == [("miss", "a"), ("insert", "a", False), ("miss", "b"), ("insert", "b", False),
                           ("hit", "a"), ("miss", "c"), ("evict", "a"), ("insert", "c", False)]
        assert gpu.capacity == 200 and gpu.resident == {"b": 100, "c": 100}
        assert not cache.resident("a") and cache.resident("b")
        check_tiers(cache)
    asyncio.run(main())

    async def lru():
        cache, _ = make({"a": 100, "b": 100, "c": 100}, gpu=200, policy="lru")
        await get(cache, "a", "b", "a", "c")
        assert cache.memories == {} and cache.resident("a") and not cache.resident("b")
    asyncio.run(lru())


def test_each_tier_reports_to_its_own_memory():
    """A demotion is an eviction from the GPU and an insert (flagged prefetch: no request asked)
    into the host tier, after the host drops that made its room; a host copy brought back is a
    GPU miss + insert and a host hit + eviction."""
    async def main():
        cache, source = make({m: 100 for m in "abcde"}, gpu=200, host=200, policy=FIFO)
        await get(cache, "a", "b", "a", "c", "d", "e")
        gpu, host = memories(cache)
        assert gpu is not host and gpu.capacity == 200 and host.capacity == 200
        assert gpu.events("evict") == [("evict", "a"), ("evict", "b"), ("evict", "c")]
        assert host.log == [("insert", "a", True), ("insert", "b", True), ("evict", "a"), ("insert", "c", True)]
        check_tiers(cache)
        n_gpu, n_host = len(gpu.log), len(host.log)
        await get(cache, "b")  # b waits in the host tier; d is the GPU's oldest, c the host's
        assert gpu.log[n_gpu:] == [("miss", "b"), ("evict", "d"), ("insert", "b", False)]
        assert host.log[n_host:] == [("evict", "c"), ("insert", "d", True), ("hit", "b"), ("evict", "b")]
        assert source.to_device_calls == ["b"]
        check_tiers(cache)
        assert_within_budgets(cache)
    asyncio.run(main())


def test_in_use_entries_are_never_offered_and_pinned_ones_go_last():
    async def main():
        cache, _ = make({m: 100 for m in "abcd"}, gpu=300, policy=FIFO)
        await get(cache, "a")
        cache.set_pins(["a"])
        held = await cache.acquire(["b"])
        await get(cache, "c", "d")  # idle: a (pinned, oldest) and c; b is in use
        gpu, _ = memories(cache)
        assert gpu.asked == [["a", "c"]]  # FIFO puts a first; the cache moves the pinned one last
        assert cache.resident("a") and cache.resident("b") and not cache.resident("c")
        assert cache.counters()["pins_overridden"] == 0
        cache.release(held)
        check_tiers(cache)
    asyncio.run(main())


def test_prefetch_is_an_insert_without_a_miss_and_a_failed_load_no_insert():
    async def main():
        cache, source = make({"a": 100, "p": 100, "x": 100}, gpu=300, policy=FIFO)
        assert await cache.prefetch("p")
        await get(cache, "p")
        source.fail.add("x")
        with pytest.raises(Exception, match="corrupt"):
            await cache.acquire(["x"])
        gpu, _ = memories(cache)
        assert gpu.log == [("insert", "p", True), ("hit", "p"), ("miss", "x")]  # x never landed
        check_tiers(cache)
    asyncio.run(main())


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_keep_every_memory_consistent(seed):
    """Random gets (concurrent too), releases, pins and prefetches, loads measuring more than
    their estimates: the strict memory raises on any event out of order, the budgets hold, and
    at rest each memory holds exactly its tier."""
    rng = np.random.default_rng(seed)
    ids, sizes, estimates, kinds = random_models(rng)

    async def main():
        cache, _ = make(sizes, gpu=500, host=300, policy=FIFO, kinds=kinds, estimates=estimates)
        for memory in cache.memories.values():  # concurrent gets: other events between a miss and its insert
            memory.memory.strict = False
        gpu = cache.memories[GPU].memory
        ask = gpu.victim_order

        def offered_idle(keys):  # what the GPU memory is asked about: settled and unused entries
            on_gpu = cache.state()["gpu"]
            assert all(on_gpu[k]["users"] == 0 for k in keys), (keys, on_gpu)
            return ask(keys)

        gpu.victim_order = offered_idle
        held: list = []
        for _ in range(120):
            await random_operation(cache, rng, ids, held)
            assert_within_budgets(cache)
            check_tiers(cache)
        cache.release(held)
        gpu, host = memories(cache)
        assert gpu.evictions > 0 and host.inserts > 0 and gpu.inserts - gpu.evictions == len(gpu.resident)

    asyncio.run(main())


def _store(demo_config, policy: str, budget: int):
    from deployments.lora_store import LoRAStore

    return LoRAStore(demo_config.model_copy(update={"cache": demo_config.cache.model_copy(
        update={"lora_store_bytes": budget, "lora_store_policy": policy})}))


def test_lora_store_reports_in_order_and_evicts_first_in_first_out(demo_config):
    from deployments.lora_store import LoRAStore

    size = {a: asyncio.run(LoRAStore(demo_config).get(a))["bytes"]
            for a in ("tiny-lora-pastel", "tiny-lora-ink", "tiny-lora-sketch")}
    budget = size["tiny-lora-sketch"] + size["tiny-lora-ink"]  # sketch and one other
    assert size["tiny-lora-pastel"] + size["tiny-lora-ink"] <= budget
    store = _store(demo_config, FIFO, budget)
    for a in ("tiny-lora-pastel", "tiny-lora-ink", "tiny-lora-pastel", "tiny-lora-sketch"):
        asyncio.run(store.get(a))  # LRU would evict ink (pastel was just used); FIFO evicts pastel
    assert set(asyncio.run(store.stats())["adapters"]) == {"tiny-lora-ink", "tiny-lora-sketch"}
    mem = store.memory
    key = {a: store._keys[a] for a in size}
    p, i, s = key["tiny-lora-pastel"], key["tiny-lora-ink"], key["tiny-lora-sketch"]
    assert mem.capacity == budget
    assert mem.log == [("miss", p), ("insert", p, False), ("miss", i), ("insert", i, False),
                       ("hit", p), ("miss", s), ("evict", p), ("insert", s, False)]
    assert asyncio.run(store.prefetch(["tiny-lora-pastel"])) == ["tiny-lora-pastel"]
    assert mem.log[-2:] == [("evict", i), ("insert", p, True)]
    assert set(mem.resident) == {store._keys[a] for a in store._cache}
    assert sum(mem.resident.values()) <= budget and mem.resident[s] == size["tiny-lora-sketch"]


def test_config_accepts_a_stateful_policy_by_name():
    from deployments.config import CacheBudgets, ControlConfig

    assert CacheBudgets(lora_store_policy=FIFO).lora_store_policy == FIFO
    assert ControlConfig(eviction=FIFO).eviction == FIFO


def test_controlnet_deployment_cache_gets_the_memories(demo_config):
    from deployments.controlnet import ControlNet

    config = demo_config.model_copy(update={"control": demo_config.control.model_copy(
        update={"policies": "coordinator", "eviction": FIFO})})
    service = ControlNet(config)
    assert isinstance(service.cache.policy, EVICTION.factory(FIFO))
    asyncio.run(service.config_of("tiny-cn-canny"))
    asyncio.run(service.config_of("tiny-cn-canny"))
    gpu = service.cache.memories[GPU].memory
    assert gpu.log == [("miss", "tiny-cn-canny"), ("insert", "tiny-cn-canny", False), ("hit", "tiny-cn-canny")]
    assert (HOST in service.cache.memories) == (config.control.host_budget_bytes > 0)


@pytest.mark.parametrize("policy", ["arc", "s3-fifo", "sieve", "gdsf", "cost-aware"])
def test_registered_stateful_policies_run_the_model_cache(policy):
    rng = np.random.default_rng(1)
    ids = [f"m{i}" for i in range(6)]

    async def main():
        cache, _ = make({m: int(rng.integers(50, 200)) for m in ids}, gpu=400, host=250, policy=policy)
        for m in rng.choice(ids, size=60).tolist():
            await get(cache, m)
            assert_within_budgets(cache)
            tiers = cache.tiers()
            for tier, memory in cache.memories.items():
                assert memory.held == {m for m, t in tiers.items() if t == tier}
        assert cache.counters()["evictions"]["host"] > 0

    asyncio.run(main())
