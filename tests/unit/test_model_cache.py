"""ModelCache with cheap fake models: budgets, pins, in-use entries, single flight, host tier,
the eviction policy's say, prefetch. The real PipelineEngine runs through it in test_replica_cache.py."""

from __future__ import annotations

import asyncio
import time
import threading

import numpy as np
import pytest

from deployments.errors import ModelLoadError
from deployments.model_cache import CacheBudgetError, ModelCache
from policies.eviction import EVICTION
from policies.load_ahead import ahead_tiers
from policies.snapshot import BASE, CONTROLNET, DISK, GPU, HOST


class FakeModel:
    def __init__(self, model_id: str, size: int):
        self.model_id, self.size, self.where, self.freed = model_id, size, "gpu", False


class FakeSource:
    """A ModelSource over plain objects with a size. `sizes` are what a load measures; `estimates`
    what the cache is told before (defaults to the size). Checks the budgets from inside every
    load and move, i.e. while other work is in flight."""

    def __init__(self, sizes: dict[str, int], kinds: dict[str, int] | None = None,
                 estimates: dict[str, int] | None = None):
        self.sizes, self.kinds, self.estimates = sizes, kinds or {}, estimates or {}
        self.loads: list[str] = []
        self.to_device_calls: list[str] = []
        self.fail: set[str] = set()
        self.gate: threading.Event | None = None  # loads wait on it when set
        self.cache: ModelCache | None = None

    def kind(self, model_id):
        return self.kinds.get(model_id, BASE)

    def source_tier(self, model_id):
        return DISK

    def estimate_bytes(self, model_id):
        return self.estimates.get(model_id, self.sizes[model_id])

    def load(self, model_id):
        self.check()
        self.loads.append(model_id)
        if self.gate is not None:
            assert self.gate.wait(10)
        if model_id in self.fail:
            raise ModelLoadError(model_id, "corrupt weights")
        return FakeModel(model_id, self.sizes[model_id])

    def size_of(self, obj):
        return obj.size

    def to_host(self, obj):
        self.check()
        obj.where = "host"
        return obj

    def to_device(self, obj):
        self.check()
        self.to_device_calls.append(obj.model_id)
        obj.where = "gpu"
        return obj

    def free(self, obj):
        obj.freed = True

    def check(self):
        if self.cache is not None:
            assert_within_budgets(self.cache)


def assert_within_budgets(cache: ModelCache) -> None:
    assert 0 <= cache.gpu_used() <= cache.gpu_budget, cache.state()
    assert 0 <= cache.host_used() <= cache.host_budget, cache.state()


def make(sizes, gpu=300, host=0, policy="lru", **kw) -> tuple[ModelCache, FakeSource]:
    source = FakeSource(sizes, **kw)
    cache = ModelCache(source, gpu, host, EVICTION.create(policy))
    source.cache = cache
    return cache, source


def run(coro):
    return asyncio.run(coro)


def test_hit_after_miss_and_lease_holds_the_object():
    async def main():
        cache, source = make({"a": 100})
        (lease,) = await cache.acquire(["a"])
        cache.release([lease])
        (again,) = await cache.acquire(["a"])
        assert again.obj is lease.obj and source.loads == ["a"]
        counters = cache.counters()
        assert counters["misses"]["disk"] == 1 and counters["hits"]["gpu"] == 1
        assert counters["loads"]["base"]["disk"] == 1
    run(main())


def test_pinned_entry_is_not_evicted_even_when_least_recent():
    async def main():
        cache, source = make({"a": 100, "b": 100, "c": 100}, gpu=200)
        cache.set_pins(["a"])
        for model in ("a", "b"):
            cache.release(await cache.acquire([model]))
        cache.release(await cache.acquire(["c"]))  # LRU would take a; the pin keeps it
        assert cache.resident("a") and not cache.resident("b") and cache.resident("c")
        cache.set_pins(["a", "c"])
        # only pins stand in the way: a pin is advice, never a refusal; the policy's victim goes
        cache.release(await cache.acquire(["b"], wait_s=5))
        assert cache.resident("b") and cache.resident("a") != cache.resident("c")
        assert cache.counters()["pins_overridden"] == 1
        assert_within_budgets(cache)
    run(main())


def test_a_request_never_waits_on_room_its_own_models_hold():
    """Base and ControlNet of one request that cannot both fit: fail at once, naming the budget,
    rather than wait for a release that only this request could make (it held the replica's
    execution lock for the whole wait: a 60 s stall measured live)."""
    async def main():
        cache, source = make({"base": 150, "cn": 100}, gpu=200)
        started = time.monotonic()
        with pytest.raises(CacheBudgetError, match=r"control.gpu_budget_bytes=200 has 50 free"):
            await cache.acquire(["base", "cn"], wait_s=30)
        assert time.monotonic() - started < 5
        assert_within_budgets(cache)
    run(main())


def test_in_use_entries_survive_pressure_and_a_waiting_request_gets_room_on_release():
    async def main():
        cache, source = make({"a": 100, "b": 100, "c": 100}, gpu=200, host=1000)
        held = await cache.acquire(["a", "b"])
        with pytest.raises(CacheBudgetError, match=r"control.gpu_budget_bytes=200 has 0 free, "
                                                   r"0 pinned and 200 in use"):
            await cache.acquire(["c"])
        assert all(lease.obj.where == "gpu" and not lease.obj.freed for lease in held)
        waiting = asyncio.create_task(cache.acquire(["c"], wait_s=10))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        cache.release(held[:1])  # a goes, b (still in use) stays
        (c,) = await waiting
        assert c.obj.model_id == "c" and cache.resident("b") and cache.tiers()["a"] == HOST
        assert held[1].obj.where == "gpu"
        assert cache.counters()["failures"]["budget"] == 1
    run(main())


def test_waiting_request_gives_back_what_it_holds_so_two_requests_cannot_deadlock():
    async def main():
        cache, _ = make({"a": 100, "b": 100, "x": 100, "y": 100}, gpu=200)
        # each gets its first model, then neither has room for its second while the other holds on
        pending = {asyncio.create_task(cache.acquire(["a", "x"], wait_s=10)),
                   asyncio.create_task(cache.acquire(["b", "y"], wait_s=10))}
        served = []
        while pending:  # whichever gets both first finishes and lets go, then the other
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                leases = task.result()
                served.append(sorted(lease.model_id for lease in leases))
                assert_within_budgets(cache)
                cache.release(leases)
        assert sorted(served) == [["a", "x"], ["b", "y"]]
    run(main())


def test_concurrent_requests_share_one_load():
    async def main():
        cache, source = make({"a": 100})
        source.gate = threading.Event()
        tasks = [asyncio.create_task(cache.acquire(["a"])) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert cache.loading() == ["a"] and cache.gpu_used() == 100
        source.gate.set()
        leases = [lease for task in tasks for lease in await task]
        assert source.loads == ["a"] and len({id(lease.obj) for lease in leases}) == 1
        assert cache.counters()["joined"] == 4 and cache.counters()["misses"]["disk"] == 1
        assert cache.state()["gpu"]["a"]["users"] == 5
        cache.release(leases)
        assert cache.state()["gpu"]["a"]["users"] == 0
    run(main())


def test_host_tier_hit_copies_back_instead_of_loading_from_disk():
    async def steps():
        cache, source = make({"a": 100, "b": 100}, gpu=100, host=100)
        cache.release(await cache.acquire(["a"]))
        cache.release(await cache.acquire(["b"]))  # a -> host
        assert cache.tiers() == {"a": HOST, "b": GPU}
        (a,) = await cache.acquire(["a"])  # b cannot go to host beside a's copy there: dropped
        assert source.loads == ["a", "b"] and source.to_device_calls == ["a"]
        assert a.obj.where == "gpu" and cache.counters()["hits"]["host"] == 1
        assert cache.counters()["loads"]["base"]["host"] == 1
        assert cache.tiers() == {"a": GPU}
        cache.release([a])
        cache.release(await cache.acquire(["b"]))  # from disk again; a goes to host
        assert source.loads == ["a", "b", "b"] and cache.tiers() == {"a": HOST, "b": GPU}
        cost = cache.load_cost_s("a")
        assert cost[GPU] == 0 and cost[HOST] >= 0 and cost[DISK] >= 0
        assert_within_budgets(cache)

    run(steps())


def test_without_a_host_tier_an_evicted_model_loads_from_disk_again():
    async def main():
        cache, source = make({"a": 100, "b": 100}, gpu=100, host=0)
        for model in ("a", "b", "a"):
            cache.release(await cache.acquire([model]))
        assert source.loads == ["a", "b", "a"] and source.to_device_calls == []
        assert cache.counters()["evictions"]["remote"] == 2
    run(main())


@pytest.mark.parametrize("policy, victim", [("lru", "base"), ("cost-aware", "cn")])
def test_the_eviction_policy_picks_the_victim(policy, victim):
    """A base model used before a ControlNet of the same bytes per second of load: LRU evicts
    the base (older), cost-aware the ControlNet (a base model's kind weight is 8)."""
    async def main():
        cache, _ = make({"base": 300, "cn": 600, "new": 300}, gpu=1000,
                        kinds={"cn": CONTROLNET}, policy=policy)
        for model in ("base", "cn", "new"):
            cache.release(await cache.acquire([model]))
        assert set(cache.tiers()) == {"base", "cn", "new"} - {victim}
    run(main())


def test_a_model_larger_than_the_budget_fails_naming_the_budget():
    async def main():
        cache, source = make({"a": 100, "huge": 500}, gpu=300)
        with pytest.raises(CacheBudgetError, match=r"'huge'.*500 bytes.*control.gpu_budget_bytes=300"):
            await cache.acquire(["huge"], wait_s=5)
        assert source.loads == []
    run(main())


def test_a_load_measuring_more_than_fits_is_freed_not_kept():
    async def main():
        cache, source = make({"a": 200, "b": 250}, gpu=300, estimates={"b": 50})
        held = await cache.acquire(["a"])
        with pytest.raises(CacheBudgetError, match="measured 250 bytes after loading"):
            await cache.acquire(["b"])
        assert cache.gpu_used() == 200 and "b" not in cache.tiers()
        cache.release(held)
        (b,) = await cache.acquire(["b"])  # now measured: reserves 250 up front, evicting a
        assert b.obj.size == 250 and cache.gpu_used() == 250
    run(main())


def test_a_failed_load_reaches_every_waiter_and_the_next_request_retries():
    async def main():
        cache, source = make({"a": 100})
        source.fail.add("a")
        source.gate = threading.Event()
        tasks = [asyncio.create_task(cache.acquire(["a"])) for _ in range(3)]
        await asyncio.sleep(0.05)
        source.gate.set()
        for task in tasks:
            with pytest.raises(ModelLoadError, match="'a' failed to load"):
                await task
        assert cache.gpu_used() == 0 and cache.tiers() == {}
        source.fail.clear()
        source.gate = None
        (lease,) = await cache.acquire(["a"])
        assert lease.obj.model_id == "a" and cache.counters()["failures"]["load"] == 1
    run(main())


def test_a_request_cancelled_during_its_load_leaves_no_user_behind():
    async def main():
        cache, source = make({"a": 100, "b": 100}, gpu=100)
        source.gate = threading.Event()
        task = asyncio.create_task(cache.acquire(["a"]))
        await asyncio.sleep(0.05)
        task.cancel()
        source.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        assert cache.resident("a") and cache.state()["gpu"]["a"]["users"] == 0
        cache.release(await cache.acquire(["b"]))  # a is evictable
        assert cache.resident("b") and not cache.resident("a")
    run(main())


def test_prefetch_only_into_free_budget_and_counts_used_and_wasted():
    async def main():
        cache, source = make({"a": 100, "b": 100, "c": 100, "d": 100}, gpu=200)
        cache.release(await cache.acquire(["a"]))
        assert await cache.prefetch("b") is True
        assert await cache.prefetch("c") is False  # would need an eviction
        assert await cache.prefetch("b") is False  # already there
        assert source.loads == ["a", "b"]
        cache.release(await cache.acquire(["b"]))  # used while resident
        counters = cache.counters()["prefetch"]
        assert counters == {"started": 1, "used": 1, "wasted": 0}
        assert cache.drain_events()["prefetch_hits"] == ["b"]
        cache.release(await cache.acquire(["a"]))
        cache.release(await cache.acquire(["c"]))  # evicts b (LRU)
        assert await cache.prefetch("d") is False
        cache.release(await cache.acquire(["a"]))
        assert await cache.prefetch("d") is False  # full: a and c
        cache.release(await cache.acquire(["b"]))  # evicts c, not prefetched
        assert cache.counters()["prefetch"]["wasted"] == 0
    run(main())


def test_a_pinned_model_placed_while_idle_is_counted_and_reported_as_a_placement():
    """The replica places coordinator pins the way it prefetches (idle, free room only), but
    they are not the bandit's: counted under `placed`, reported as placement loads, and their
    first use is no prefetch hit for the coordinator to credit."""
    async def main():
        cache, _ = make({"a": 100, "b": 100, "c": 100}, gpu=300)
        assert await cache.prefetch("a", placement=True) and await cache.prefetch("b")
        cache.release(await cache.acquire(["a"]))
        cache.release(await cache.acquire(["b"]))
        counters = cache.counters()
        assert counters["placed"] == {"started": 1, "used": 1, "wasted": 0}
        assert counters["prefetch"] == {"started": 1, "used": 1, "wasted": 0}
        events = cache.drain_events()
        assert [(e["id"], e["prefetch"], e["placement"]) for e in events["loads"]] == [
            ("a", False, True), ("b", True, False)]
        assert events["prefetch_hits"] == ["b"]
    run(main())


def test_an_unused_prefetch_evicted_counts_as_wasted():
    async def main():
        cache, _ = make({"a": 100, "b": 100, "c": 100}, gpu=200)
        assert await cache.prefetch("a")
        cache.release(await cache.acquire(["b"]))
        cache.release(await cache.acquire(["c"]))  # LRU victim: the untouched prefetch a
        assert cache.counters()["prefetch"] == {"started": 1, "used": 0, "wasted": 1}
        events = cache.drain_events()
        assert [e["id"] for e in events["loads"]] == ["a", "b", "c"]
        assert events["loads"][0]["prefetch"] and events["evicted"] == [{"id": "a", "to": 3}]
        assert cache.drain_events() == {"loads": [], "evicted": [], "prefetch_hits": []}
    run(main())


def random_models(rng: np.random.Generator) -> tuple[list[str], dict, dict, dict]:
    """Eight models: ids, true sizes, the smaller estimates the cache has before a first load,
    and kinds (base or ControlNet)."""
    ids = [f"m{i}" for i in range(8)]
    sizes = {m: int(rng.integers(50, 250)) for m in ids}
    estimates = {m: max(1, sizes[m] - int(rng.integers(0, 60))) for m in ids}
    kinds = {m: int(rng.choice([BASE, CONTROLNET])) for m in ids}
    return ids, sizes, estimates, kinds


async def random_operation(cache: ModelCache, rng: np.random.Generator, ids: list[str], held: list) -> None:
    """One of: a get, three concurrent gets, a release of a held lease, new pins, a prefetch."""
    op = rng.choice(["get", "gets", "release", "pin", "prefetch"], p=[.35, .15, .3, .1, .1])
    if op == "get" or op == "gets":
        wanted = [list(rng.choice(ids, size=int(rng.integers(1, 3)), replace=False))
                  for _ in range(1 if op == "get" else 3)]
        for result in await asyncio.gather(*(cache.acquire(w) for w in wanted), return_exceptions=True):
            if isinstance(result, BaseException):
                assert isinstance(result, CacheBudgetError), result
                assert "control.gpu_budget_bytes" in str(result)
            else:
                held.extend(result)
    elif op == "release" and held:
        cache.release([held.pop(int(rng.integers(len(held))))])
    elif op == "pin":
        cache.set_pins(rng.choice(ids, size=int(rng.integers(0, 3)), replace=False))
    elif op == "prefetch":
        await cache.prefetch(str(rng.choice(ids)))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("policy", ["lru", "cost-aware"])
def test_random_operations_never_exceed_a_budget(seed, policy):
    """Random gets (alone and concurrent), releases, pins and prefetches; sizes the cache
    underestimates before the first load; budgets checked after every step and inside every
    load and move. In-use entries stay on the device throughout; pinned ones too, unless a pin
    override (counted) was the only way to make room."""
    rng = np.random.default_rng(seed)
    ids, sizes, estimates, kinds = random_models(rng)

    async def main():
        cache, source = make(sizes, gpu=500, host=300, policy=policy, kinds=kinds, estimates=estimates)
        held: list = []
        overrides = 0
        for _ in range(120):
            pinned_before = {m for m in cache.pins if cache.resident(m)}
            await random_operation(cache, rng, ids, held)
            assert_within_budgets(cache)
            for lease in held:  # in use: on the device, never moved or freed
                assert cache.resident(lease.model_id) and lease.obj.where == "gpu" and not lease.obj.freed
            # a pinned entry leaves only when nothing unpinned could make the room (counted)
            overridden = cache.counters()["pins_overridden"] - overrides
            gone = [m for m in pinned_before if m in cache.pins and not cache.resident(m)]
            assert len(gone) <= overridden, (gone, overridden)
            overrides += overridden
        cache.release(held)
        assert cache.in_use() == 0
        counters = cache.counters()
        assert sum(counters["loads"]["base"].values()) + sum(counters["loads"]["controlnet"].values()) > 0

    run(main())


def test_load_ahead_overlaps_the_running_request_and_its_acquire_takes_the_load_over():
    """A queued request's load starts while another request holds its model: the queued
    request's acquire joins that load (one load, counted as its miss, not a join or a hit)."""
    async def main():
        cache, source = make({"a": 100, "b": 100}, gpu=300, policy="cost-aware")
        running = await cache.acquire(["a"])
        source.gate = threading.Event()
        assert await cache.load_ahead(["b"], keep=frozenset({"a"})) == ["b"]
        assert cache.loading() == ["b"] and cache.gpu_used() == 200  # while "a" is still in use
        assert await cache.load_ahead(["b"], keep=frozenset()) == []  # single flight
        source.gate.set()
        cache.release(running)
        (b,) = await cache.acquire(["b"])
        counters = cache.counters()
        assert source.loads == ["a", "b"] and b.obj.model_id == "b"
        assert counters["misses"]["disk"] == 2 and counters["joined"] == 0 and counters["hits"]["gpu"] == 0
        assert counters["ahead"] == {"started": 1, "used": 1, "wasted": 0}
        cache.release([b])
        cache.release(await cache.acquire(["b"]))  # later uses are hits again
        assert cache.counters()["hits"]["gpu"] == 1
    run(main())


def test_load_ahead_from_the_host_tier_only_leaves_a_read_from_disk_to_acquire():
    """On a GPU replica (policies.load_ahead.ahead_tiers 'auto'): a model whose copy is in host
    memory comes back ahead; one that must be read from its local files waits for its request."""
    async def main():
        cache, source = make({"a": 100, "b": 100, "c": 100, "e": 100}, gpu=200, host=100)
        for model in ("a", "b", "c"):  # a -> host when c comes (LRU); c and b on the device
            cache.release(await cache.acquire([model]))
        assert cache.tiers() == {"a": HOST, "b": GPU, "c": GPU}
        running = await cache.acquire(["c"])
        host_only = ahead_tiers("auto", on_gpu=True)
        assert await cache.load_ahead(["a"], keep=frozenset({"c"}), tiers=host_only) == ["a"]
        (a,) = await cache.acquire(["a"])
        assert source.to_device_calls == ["a"] and cache.counters()["ahead"]["used"] == 1
        cache.release([a])
        # e has never been loaded: it must be read from its files, so it waits for its request
        assert await cache.load_ahead(["e"], keep=frozenset({"c"}), tiers=host_only) == []
        assert source.loads == ["a", "b", "c"] and not cache.resident("e")
        assert await cache.load_ahead(["e"], keep=frozenset({"c"}), tiers=ahead_tiers("any", on_gpu=True)) == ["e"]
        cache.release(running)
        cache.release(await cache.acquire(["e"]))
        assert source.loads == ["a", "b", "c", "e"]
        assert_within_budgets(cache)
    run(main())


def test_load_ahead_never_evicts_what_other_requests_need_and_leaves_the_rest_to_acquire():
    async def main():
        cache, source = make({"a": 100, "b": 100, "c": 100, "d": 100}, gpu=200)
        for model in ("a", "b"):
            cache.release(await cache.acquire([model]))
        # a queued request needs "a" and "b": no room for "c" ahead without evicting them
        assert await cache.load_ahead(["c"], keep=frozenset({"a", "b"})) == []
        assert cache.resident("a") and cache.resident("b") and source.loads == ["a", "b"]
        # only "b" is needed: "a" (the LRU victim anyway) makes the room
        assert await cache.load_ahead(["c"], keep=frozenset({"b"})) == ["c"]
        (c,) = await cache.acquire(["c"])
        assert cache.resident("b") and not cache.resident("a")
        cache.release([c])
        # at the lock, what queued requests need is evicted last: LRU would take "b" here
        cache.release(await cache.acquire(["d"], spare=frozenset({"b"})))
        assert cache.resident("b") and not cache.resident("c") and cache.resident("d")
        assert_within_budgets(cache)
    run(main())


def test_a_load_ahead_evicted_before_its_request_came_counts_wasted_and_a_failed_one_is_retried():
    async def main():
        cache, source = make({"a": 100, "b": 100, "c": 100}, gpu=200)
        cache.release(await cache.acquire(["a"]))
        assert await cache.load_ahead(["b"], keep=frozenset()) == ["b"]
        while cache.loading():
            await asyncio.sleep(0.01)
        # another request, at the lock, takes b's room (nothing spares it)
        cache.release(await cache.acquire(["c"]))
        cache.release(await cache.acquire(["a"]))
        assert not cache.resident("b")
        assert cache.counters()["ahead"] == {"started": 1, "used": 0, "wasted": 1}
        source.fail.add("b")
        assert await cache.load_ahead(["b"], keep=frozenset()) == ["b"]
        while cache.loading():
            await asyncio.sleep(0.01)
        source.fail.clear()
        (b,) = await cache.acquire(["b"])  # the failed load is not its answer: it loads again
        assert b.obj.model_id == "b" and source.loads.count("b") == 3
        assert cache.counters()["ahead"]["wasted"] == 2 and cache.counters()["failures"]["load"] == 1
        assert_within_budgets(cache)
    run(main())
