"""The replica's host tier for LoRA adapters: byte budget, policy-driven eviction, hit/miss."""

import itertools

import numpy as np
import pytest

from deployments.adapter_tier import AdapterTier
from policies.eviction import EVICTION


@pytest.mark.parametrize("policy", ["cost-aware", "lru", "gdsf", "sieve"])
def test_budget_is_never_exceeded_and_held_tensors_match_the_policy(policy):
    clock = itertools.count().__next__
    tier = AdapterTier(1000, EVICTION.create(policy), clock)
    rng = np.random.default_rng(0)
    for _ in range(400):
        a = f"a{int(rng.zipf(1.3)) % 20}"
        found, missing = tier.take([a])
        assert (a in found) != (missing == [a])
        if missing:
            tier.put(a, {"w": a}, int(100 + 50 * (hash(a) % 5)), 0.05)
        assert tier.used_bytes() <= 1000
        assert all(tier._tensors[k] == {"w": k} for k in tier.held())
    assert tier.hits > 0 and tier.misses > 0 and tier.hits + tier.misses == 400


def test_off_or_too_large_keeps_nothing():
    off = AdapterTier(0, EVICTION.create("cost-aware"), lambda: 0.0)
    off.put("a", {}, 10, 0.1)
    assert off.held() == [] and off.take(["a"]) == ({}, ["a"])
    small = AdapterTier(100, EVICTION.create("lru"), lambda: 0.0)
    small.put("big", {}, 101, 0.1)
    small.put("ok", {}, 60, 0.1)
    small.put("next", {}, 60, 0.1)  # LRU: "ok" leaves to make room
    assert small.held() == ["next"] and small.used_bytes() == 60
