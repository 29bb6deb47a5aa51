"""cost-aware (the default eviction): a priced, decayed reuse count at several time scales, led by
the scale whose shadow cache has lately missed the fewest load-seconds."""

from __future__ import annotations

import numpy as np
import pytest

from policies.cost_adaptive import CostAware
from policies.eviction import EVICTION, StatefulEviction
from policies.shadow import ShadowCache
from policies.snapshot import BASE, LORA

GB = 1_000_000_000


def misses(policy: StatefulEviction, seq: list[int], capacity: int) -> int:
    cache = ShadowCache(policy, capacity)
    for k in seq:
        cache.access(k, kind=LORA)
    return cache.misses


def shifting_working_sets(rng: np.random.Generator, n: int = 6000) -> list[int]:
    """Recency wins: a small hot set that moves to fresh keys every 300 accesses."""
    return [int(rng.integers(0, 6)) + 6 * (i // 300) for i in range(n)]


def zipf_with_one_hit_wonders(rng: np.random.Generator, n: int = 6000) -> list[int]:
    """Frequency wins: a stable Zipf head interleaved with keys never seen again."""
    p = 1.0 / np.arange(1, 41) ** 1.1
    head = rng.choice(40, size=n, p=p / p.sum())
    return [int(h) if rng.random() < 0.6 else 1000 + i for i, h in enumerate(head)]


def test_is_the_registered_default_and_remembers():
    from policies.defaults import DEFAULT_EVICTION

    assert DEFAULT_EVICTION == "cost-aware" and isinstance(EVICTION.create("cost-aware"), CostAware)
    assert EVICTION.create("cost-aware").stateful


def test_follows_recency_when_popularity_moves():
    rng = np.random.default_rng(0)
    seq = shifting_working_sets(rng)
    lru, lfu = misses_of("lru", seq, 8), misses_of("lfu", seq, 8)
    ours = misses(CostAware(), seq, 8)
    assert ours <= 1.05 * lru < lfu  # LFU clings to the old hot sets; the default does not


def test_follows_frequency_when_popularity_is_stable():
    rng = np.random.default_rng(1)
    seq = zipf_with_one_hit_wonders(rng)
    cache = ShadowCache(CostAware(), 8)
    for k in seq:
        cache.access(k, kind=LORA)
    assert cache.misses < 0.95 * misses_of("lru", seq, 8)  # one-hit wonders no longer flush the head
    assert cache.memory.leader() >= 2  # a long half-life leads (index 0 is the near-LRU scale)


def misses_of(name: str, seq: list[int], capacity: int) -> int:
    """Misses of a stateless registered policy, by the trace simulator's reference engine."""
    from trace_replay.cache_sim import AccessStream, simulate_sequential
    from policies.eviction import NEVER

    key = np.array(seq, dtype=np.int64)
    n = key.size
    stream = AccessStream(np.zeros(n, np.int32), key, np.ones(n, np.int8), np.arange(n, dtype=np.float64),
                          np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64), np.full(n, NEVER),
                          np.array([0]), np.array([n]), int(key.max()) + 1, n, ["i"])
    m, _ = simulate_sequential(stream, EVICTION.create(name), capacity)
    return int(m[0])


def base_and_lora_used_alike(policy: CostAware):
    """A 7 GB base (22.6 s to load) and a 0.33 GB LoRA (4.6 s), each loaded then hit three times."""
    mem = policy.new_memory(100 * GB)
    for key, kind, size, cost in (("base", BASE, 7 * GB, 22.6), ("lora", LORA, GB // 3, 4.6)):
        mem.on_miss(key, 0.0)
        mem.on_insert(key, kind, size, cost, 0.0)
    for _ in range(3):
        mem.on_hit("base", 0.0)
        mem.on_hit("lora", 0.0)
    return mem


def test_prices_load_cost_kind_and_size_at_equal_history():
    # one long scale, so that the order of the hits (the LoRA's come last) barely counts
    mem = base_and_lora_used_alike(CostAware(half_lives=(64.0,)))
    assert mem.victim_order(["base", "lora"]) == ["lora", "base"]  # 22.6 s x 8 / 7 GB > 4.6 s / 0.33 GB
    flat = base_and_lora_used_alike(CostAware(half_lives=(64.0,), kind_weight={BASE: 1.0}))
    assert flat.victim_order(["base", "lora"]) == ["base", "lora"]  # by bytes alone the base goes


def test_a_prefetch_is_not_a_use_and_unseen_keys_go_first():
    mem = CostAware().new_memory(4)
    for k in ("a", "b"):
        mem.on_miss(k, 0.0)
        mem.on_insert(k, LORA, 1.0, None, 0.0)
    mem.on_insert("p", LORA, 1.0, None, 0.0, prefetch=True)
    assert mem.victim_order(["a", "p", "b"])[0] == "p"  # never used: valued as nothing yet
    assert mem.victim_order(["a", "ghost"])[0] == "ghost"  # no history at all


def test_history_is_bounded():
    pol = CostAware(history=16)
    cache = ShadowCache(pol, 4)
    for k in range(500):
        cache.access(k, kind=LORA)
    assert len(cache.memory.score) <= 2 * 16 + 4 * (len(pol.half_lives) + 1)


@pytest.mark.parametrize("kwargs", [dict(half_lives=()), dict(half_lives=(1.0, 0.0)), dict(leader_half_life=0),
                                    dict(history=0), dict(kind_weight={1: -1.0})])
def test_bad_arguments_name_the_problem(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).split("_")[0]):
        CostAware(**kwargs)
    with pytest.raises(ValueError, match="capacity"):
        CostAware().new_memory(0)
