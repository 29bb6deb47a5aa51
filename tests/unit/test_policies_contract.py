"""The contract every registered policy of every kind passes: decisions within bounds, the same
seed gives the same decisions, and the snapshot (read-only arrays here) is never written.

Eviction's contract lives in test_policies_eviction.py (it walks EVICTION, so cost-aware is in).
A new policy registered under any of these registries is picked up here without editing this file.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pytest
from policy_factories import GB, random_pipelines, random_snapshot, request

from policies.autoscaling import AUTOSCALING, SCALE_DOWN, AutoscalingContext, Guardrails
from policies.bandit import PIPELINE_PREFETCH, ArmStats, PrefetchOffer
from policies.placement import PLACEMENT, PlacementContext
from policies.popularity import POPULARITY
from policies.routing import ROUTING
from policies.snapshot import HOT, PipelineIndex, freeze


def _same(a, b) -> None:
    """Two decisions are equal, whatever their shape (array, int, dataclass of arrays, tuple)."""
    if hasattr(a, "__dataclass_fields__"):
        for f in a.__dataclass_fields__:
            _same(getattr(a, f), getattr(b, f))
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", POPULARITY.names())
class TestPopularityContract:
    def run(self, name: str, seed: int):
        p = POPULARITY.create(name)
        rng = np.random.default_rng(seed)
        state = p.new_state()
        t = 0.0
        for _ in range(300):
            t += float(rng.exponential(5.0))
            ids = freeze(rng.integers(0, 40, rng.integers(1, 4)))
            p.observe(state, ids, t)
        return p, state, t

    def test_bounds(self, name):
        p, state, t = self.run(name, 0)
        s, b = p.scores(state, t), p.bands(state, t)
        assert s.shape == b.shape == (state.n,) and np.isfinite(s).all() and (s >= 0).all()
        assert set(np.unique(b).tolist()) <= {0, 1, 2}
        assert (s[b == HOT].min() >= s[b != HOT].max())  # bands follow demand

    def test_same_seed_same_decisions_and_reads_do_not_write(self, name):
        p, a, t = self.run(name, 1)
        _, b, _ = self.run(name, 1)
        before = a.copy()
        _same(p.scores(a, t), p.scores(b, t))
        _same(p.bands(a, t), p.bands(b, t))
        np.testing.assert_array_equal(a.weight, before.weight)
        assert a.t0 == before.t0 and a.n == before.n


def _offer(rng: np.random.Generator, arms: int = 12) -> PrefetchOffer:
    return freeze(PrefetchOffer(now=10.0, arms=rng.permutation(50)[:arms].astype(np.int64),
                                missing_bytes=rng.integers(0, 4, arms) * GB,
                                load_cost_s=rng.random(arms) * 20, free_bytes=int(rng.integers(0, 10)) * GB))


def _stats(rng: np.random.Generator, n: int = 50) -> ArmStats:
    pulls = rng.integers(0, 5, n).astype(np.float64)
    return freeze(ArmStats(pulls, pulls * rng.normal(0, 3, n), float(pulls.sum())))


@pytest.mark.parametrize("name", PIPELINE_PREFETCH.names())
class TestPipelinePrefetchContract:
    def test_bounds(self, name):
        b = PIPELINE_PREFETCH.create(name)
        for seed in range(20):
            rng = np.random.default_rng(seed)
            offer, stats = _offer(rng), _stats(rng)
            got = b.propose(offer, stats, rng)
            assert got.dtype == np.int64 and len(set(got.tolist())) == got.size
            assert ((0 <= got) & (got < offer.arms.size)).all()
            assert offer.missing_bytes[got].sum() <= offer.free_bytes
            assert got.size <= b.max_prefetch and (offer.missing_bytes[got] > 0).all()

    def test_same_seed_same_decisions_no_mutation(self, name):
        b = PIPELINE_PREFETCH.create(name)
        offer, stats = _offer(np.random.default_rng(3)), _stats(np.random.default_rng(4))
        _same(b.propose(offer, stats, np.random.default_rng(7)), b.propose(offer, stats, np.random.default_rng(7)))
        new = b.update(stats, np.array([1, 60]), np.array([2.0, -1.0]))  # frozen stats: writing would raise
        assert new.pulls[60] == 1 and new.total == stats.total + 2 and new.pulls[1] == stats.pulls[1] + 1


def _placement_ctx(seed: int) -> PlacementContext:
    rng = np.random.default_rng(seed)
    snap = random_snapshot(rng, n_replicas=10)
    index = PipelineIndex()
    for k in random_pipelines(rng, 60):
        index.intern(k)
    n = len(index)
    demand = rng.pareto(1.2, n) * (rng.random(n) < 0.9)
    from policies.popularity import bands_by_rank

    return freeze(PlacementContext(snap, demand, bands_by_rank(demand, 0.1, 0.25),
                                   [index.components(p) for p in range(n)], np.full(10, 20 * GB, np.int64)))


@pytest.mark.parametrize("name", PLACEMENT.names())
class TestPlacementContract:
    def test_bounds(self, name):
        p = PLACEMENT.create(name)
        for seed in range(5):
            ctx = _placement_ctx(seed)
            plan = p.plan(ctx)
            R = ctx.snapshot.replicas.n
            assert ((0 <= plan.pin_replica) & (plan.pin_replica < R)).all()
            assert (ctx.bands[plan.pin_pipeline] == HOT).all()
            pairs = set(zip(plan.pin_pipeline.tolist(), plan.pin_replica.tolist()))
            assert len(pairs) == plan.pin_pipeline.size  # no pipeline pinned twice on a replica
            assert ((0 <= plan.k) & (plan.k <= R)).all() and plan.pool.shape == (R,)
            for r in range(R):  # pinned bytes within the replica's GPU memory
                comps = {c for pp, rr in pairs if rr == r for c in ctx.pipeline_components[pp].tolist()}
                assert ctx.snapshot.components.size_bytes[list(comps)].sum() <= ctx.gpu_bytes[r]
            assert plan.fused_base.shape == plan.fused_lora.shape

    def test_same_input_same_plan(self, name):
        _same(PLACEMENT.create(name).plan(_placement_ctx(9)), PLACEMENT.create(name).plan(_placement_ctx(9)))


@pytest.mark.parametrize("name", ROUTING.names())
class TestRoutingContract:
    def test_bounds_and_determinism(self, name):
        router = ROUTING.create(name)
        for seed in range(30):
            rng = np.random.default_rng(seed)
            snap = random_snapshot(rng, n_replicas=int(rng.integers(1, 12)))
            req = request(random_pipelines(rng, 1)[0], band=int(rng.integers(0, 3)))
            a = router.route(snap, req, np.random.default_rng(seed))
            b = ROUTING.create(name).route(snap, req, np.random.default_rng(seed))
            assert isinstance(a, int) and 0 <= a < snap.replicas.n and a == b


@pytest.mark.parametrize("name", AUTOSCALING.names())
class TestAutoscalingContract:
    def run(self, name: str, seed: int) -> list[int]:
        guarded = Guardrails(min_replicas=2, max_replicas=7, upscale_delay_s=20, downscale_delay_s=60,
                             hysteresis=0.1)(AUTOSCALING.create(name))
        rng = np.random.default_rng(seed)
        state: dict = MappingProxyType({})
        target, out = 2, []
        for tick in range(200):
            load = float(rng.choice([0, 1, 5, 40]) * rng.random())
            ctx = AutoscalingContext(now=tick * 10.0, current_replicas=target, target_replicas=target,
                                     total_num_requests=load, arrival_rate=load, service_time_s=2.0,
                                     policy_state=state)
            target, new_state = guarded(ctx)
            state = MappingProxyType(new_state)  # the policy may not write what it was given
            assert isinstance(target, int) and 2 <= target <= 7
            out.append(target)
        return out

    def test_bounds_and_determinism(self, name):
        assert self.run(name, 0) == self.run(name, 0)


@pytest.mark.parametrize("name", SCALE_DOWN.names())
class TestScaleDownContract:
    def test_bounds_and_determinism(self, name):
        s = SCALE_DOWN.create(name)
        for seed in range(10):
            rng = np.random.default_rng(seed)
            snap = random_snapshot(rng, n_replicas=6)
            demand = freeze(rng.random(snap.components.n))
            for n in (0, 1, 3, 9):
                got = s.choose(snap, demand, n)
                assert got.size == min(n, 6) and len(set(got.tolist())) == got.size
                assert ((0 <= got) & (got < 6)).all()
                _same(got, SCALE_DOWN.create(name).choose(snap, demand, n))


def test_every_kind_has_its_names():
    assert {"decayed", "cumulative"} <= set(POPULARITY.names())
    assert {"ucb1", "thompson", "none"} <= set(PIPELINE_PREFETCH.names())
    assert {"popularity-bands", "none"} <= set(PLACEMENT.names())
    assert {"least-expected-latency", "ray-multiplex", "random"} <= set(ROUTING.names())
    assert {"ewma-headroom", "ray-queue-length"} <= set(AUTOSCALING.names())
    assert {"cache-aware", "newest-first"} <= set(SCALE_DOWN.names())
