"""cost-lrfu eviction (the stateless reference): load cost and size matter, not recency alone."""

from __future__ import annotations

import numpy as np

from policies.eviction import EVICTION, CacheView, lex_argmin, propose_victims
from policies.snapshot import BASE, CONTROLNET, LORA

GB = 1_000_000_000


def view(kind, uses, last_seq, loaded_seq, seq, size=None, cost=None) -> CacheView:
    a = lambda x, t=np.int64: None if x is None else np.array(x, dtype=t)  # noqa: E731
    n = len(kind)
    return CacheView(key=np.arange(n, dtype=np.int64), kind=a(kind, np.int8), uses=a(uses), last_seq=a(last_seq),
                     loaded_seq=a(loaded_seq), last_time=np.zeros(n), seq=np.int64(seq), now=np.float64(seq),
                     size_bytes=a(size), load_cost_s=a(cost, np.float64))


def test_keeps_expensive_base_over_cheap_lora_at_equal_reuse():
    v = view([BASE, LORA], uses=[3, 3], last_seq=[9, 8], loaded_seq=[0, 0], seq=10,
             size=[7 * GB, GB // 3], cost=[22.6, 4.6])
    assert propose_victims(EVICTION.create("cost-lrfu"), v).tolist() == [1]  # the LoRA goes
    assert propose_victims(EVICTION.create("lru"), v).tolist() == [1]
    v2 = view([BASE, LORA], uses=[3, 3], last_seq=[8, 9], loaded_seq=[0, 0], seq=10,
              size=[7 * GB, GB // 3], cost=[22.6, 4.6])
    assert propose_victims(EVICTION.create("cost-lrfu"), v2).tolist() == [1]  # even when the base is older
    assert propose_victims(EVICTION.create("lru"), v2).tolist() == [0]  # LRU throws the base away


def test_kind_weight_is_what_keeps_the_base_per_byte():
    """With equal kind weights the per-byte term alone prefers the small LoRA: the weight matters."""
    v = view([BASE, LORA], uses=[3, 3], last_seq=[9, 8], loaded_seq=[0, 0], seq=10,
             size=[7 * GB, GB // 3], cost=[22.6, 4.6])
    flat = EVICTION.create("cost-lrfu", kind_weight={BASE: 1.0})
    assert propose_victims(flat, v).tolist() == [0]


def test_unused_base_goes_before_a_busy_lora():
    v = view([BASE, LORA], uses=[1, 40], last_seq=[1, 190], loaded_seq=[0, 0], seq=200,
             size=[7 * GB, GB // 3], cost=[22.6, 4.6])
    assert propose_victims(EVICTION.create("cost-lrfu"), v).tolist() == [0]


def test_slot_counted_cache_uses_per_kind_costs():
    """The adapter cache simulator fills no sizes/costs: entries cost one slot and the talk's
    per-kind load times apply (ControlNet 5.1 s vs LoRA 4.6 s, so at equal reuse the LoRA goes)."""
    v = view([CONTROLNET, LORA], uses=[2, 2], last_seq=[4, 5], loaded_seq=[0, 0], seq=6)
    keys = EVICTION.create("cost-lrfu").priority(v)
    assert int(lex_argmin(keys, np.ones(2, bool))) == 1


def test_frequency_and_recency_both_count():
    """A much-used entry survives a little idleness; a long-idle one decays below a fresh one."""
    p = EVICTION.create("cost-lrfu", half_life_accesses=10)
    busy_then_idle = view([LORA, LORA], uses=[20, 1], last_seq=[90, 99], loaded_seq=[0, 98], seq=100)
    assert propose_victims(p, busy_then_idle).tolist() == [1]
    long_idle = view([LORA, LORA], uses=[20, 1], last_seq=[10, 99], loaded_seq=[0, 98], seq=100)
    assert propose_victims(p, long_idle).tolist() == [0]


def test_lockstep_shapes():
    """Works on many caches at once (leading axes), as the lock-step simulator calls it."""
    rng = np.random.default_rng(0)
    shape = (5, 4)
    last = rng.integers(0, 50, shape)
    v = CacheView(key=np.arange(20).reshape(shape), kind=rng.integers(0, 2, shape).astype(np.int8),
                  uses=rng.integers(0, 5, shape), last_seq=last, loaded_seq=last - 3, last_time=np.zeros(shape),
                  seq=np.full(5, 60), now=np.full(5, 60.0))
    keys = EVICTION.create("cost-lrfu").priority(v)
    assert all(k.shape == shape for k in keys) and np.isfinite(keys[0]).all()
