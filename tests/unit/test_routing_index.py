"""LeastExpectedLatency.route_indexed (the simulator's incremental form) chooses exactly as route
(the snapshot form the live router calls): same replica, same ties, same random draws."""

from __future__ import annotations

import numpy as np
import pytest
from policy_factories import components

from policies.routing import ROUTING, LatencyIndex
from policies.snapshot import BASE, CONTROLNET, DISK, GPU, HOST, LORA, REMOTE, SHARED, ClusterSnapshot, ReplicaTable
from policies.snapshot import RouteRequest, freeze

KINDS = [BASE] * 3 + [CONTROLNET] * 2 + [LORA] * 5


def _state(rng: np.random.Generator, n: int, now: float, p_gpu: float):
    comp = components(KINDS)
    C = comp.n
    p_rest = (1.0 - p_gpu) / 3
    tier = rng.choice(np.array([GPU, HOST, DISK, REMOTE], np.int8), size=(n, C), p=[p_gpu, p_rest, p_rest, p_rest])
    # idle replicas (busy_until <= now, some exactly now), busy ones, and some whose work just drained
    kind = rng.integers(0, 3, n)
    bu = np.where(kind == 0, now - rng.random(n) * 5 * (rng.random(n) < 0.5),
                  np.where(kind == 1, now + rng.integers(0, 4, n) * 2.5, now - 1.0))
    bu[rng.random(n) < 0.05] = np.inf  # not routable
    rep = ReplicaTable(tier=tier, queue_len=np.zeros(n, np.int64), busy_until=bu,
                       gpu_free_bytes=np.zeros(n, np.int64), host_free_bytes=np.zeros(n, np.int64),
                       pool=np.full(n, SHARED, np.int8), n_models=np.zeros(n, np.int64))
    ix = LatencyIndex(n, comp)
    for r, c in zip(*np.nonzero(tier != REMOTE)):
        ix.set_tier(int(r), int(c), int(tier[r, c]))
    ix.idle.update(np.flatnonzero((kind == 0) & (bu <= now)).tolist())  # kind 2 drained too, undeclared
    return freeze(ClusterSnapshot(now, rep, comp)), ix


@pytest.mark.parametrize("p_gpu", [0.1, 0.5, 0.9])
def test_indexed_route_matches_the_snapshot_route(p_gpu):
    router = ROUTING.create("least-expected-latency", band_pools=False)
    gen = np.random.default_rng(int(p_gpu * 10))
    zero_hits = 0
    for trial in range(300):
        n = int(gen.integers(1, 12))
        now = float(gen.choice([0.0, 100.0, 1e6]))
        snap, ix = _state(gen, n, now, p_gpu)
        k = int(gen.integers(1, 5))
        comps = [int(gen.integers(0, 3))] + gen.choice(np.arange(3, len(KINDS)), k - 1, replace=False).tolist()
        seed = int(gen.integers(1 << 30))
        a_rng, b_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        a = router.route(snap, RouteRequest(0, np.array(comps, np.int64)), a_rng)
        calls = []
        b = router.route_indexed(ix, now, comps, lambda: calls.append(1) or snap.queue_wait_s(), b_rng)
        assert a == b, (trial, comps)
        assert a_rng.integers(1 << 62) == b_rng.integers(1 << 62)  # the same draws were taken
        zero_hits += not calls
    assert zero_hits > 0  # the holder-set shortcut was exercised


def test_index_follows_tier_changes():
    ix = LatencyIndex(3, components(KINDS))
    ix.set_tier(1, 0, GPU)
    ix.set_tier(2, 0, HOST)
    assert ix.gpu[0] == {1} and ix.load_s[0].tolist() == [22.6, 0.0, pytest.approx(2.26)]
    ix.set_tier(1, 0, REMOTE)
    assert ix.gpu[0] == set() and ix.load_s[0, 1] == 22.6


def test_indexed_route_refuses_band_pools():
    with pytest.raises(ValueError):
        ROUTING.create("least-expected-latency").route_indexed(LatencyIndex(1, components(KINDS)), 0.0, [0],
                                                               lambda: np.zeros(1), np.random.default_rng(0))
