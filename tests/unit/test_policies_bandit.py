"""Bandit prefetch: UCB1 explores each arm once then exploits; Thompson learns the same; memory
bounds and proven losers are respected."""

from __future__ import annotations

import numpy as np
import pytest

from policies.bandit import PIPELINE_PREFETCH, ArmStats, PrefetchOffer
from policies.snapshot import freeze

GB = 1_000_000_000
MEANS = np.array([1.0, 6.0, -4.0, 3.0])  # seconds gained per prefetch of arms (pipelines) 10..13


def offer(free_gb: float = 100.0, sizes_gb=(1, 1, 1, 1)) -> PrefetchOffer:
    n = len(sizes_gb)
    return freeze(PrefetchOffer(now=0.0, arms=np.arange(10, 10 + n, dtype=np.int64),
                                missing_bytes=np.array(sizes_gb, np.int64) * GB, load_cost_s=np.ones(n),
                                free_bytes=int(free_gb * GB)))


def play(name: str, rounds: int, seed: int = 0) -> list[int]:
    b = PIPELINE_PREFETCH.create(name, max_prefetch=1)
    rng = np.random.default_rng(seed)
    stats, picks = b.new_stats(), []
    o = offer()
    for _ in range(rounds):
        got = b.propose(o, stats, rng)
        if got.size == 0:
            picks.append(-1)
            continue
        i = int(got[0])
        picks.append(i)
        stats = b.update(stats, o.arms[i], MEANS[i] + rng.normal(0, 1.0))
    return picks


def test_ucb1_explores_every_arm_once_then_exploits_the_best():
    picks = play("ucb1", 300)
    assert picks[:4] == [0, 1, 2, 3]  # untried arms first, in pipeline-id order
    later = np.array(picks[100:])
    assert np.mean(later == 1) > 0.8 and np.mean(later == 2) < 0.02


def test_thompson_learns_the_best_arm():
    later = np.array(play("thompson", 300)[100:])
    assert np.mean(later == 1) > 0.8 and np.mean(later == 2) < 0.02


@pytest.mark.parametrize("name", ["ucb1", "thompson"])
def test_a_proven_loser_is_not_prefetched_even_into_free_memory(name):
    b = PIPELINE_PREFETCH.create(name)
    stats = ArmStats(np.zeros(11), np.zeros(11), 0.0)
    stats = b.update(stats, np.full(200, 10), np.full(200, -5.0))  # arm 10: always lost 5 s
    o = freeze(PrefetchOffer(0.0, np.array([10]), np.array([GB]), np.ones(1), 50 * GB))
    assert all(b.propose(o, stats, np.random.default_rng(s)).size == 0 for s in range(20))


def test_fills_only_idle_memory():
    b = PIPELINE_PREFETCH.create("ucb1", max_prefetch=4)
    got = b.propose(offer(free_gb=3.5, sizes_gb=(2, 2, 1, 1)), b.new_stats(), np.random.default_rng(0))
    assert got.tolist() == [0, 2]  # untried in id order: arm 0 (2 GB), arm 1 does not fit, arm 2 (1 GB)


def test_update_returns_new_stats_and_leaves_the_old_alone():
    b = PIPELINE_PREFETCH.create("thompson")
    s0 = b.new_stats(3)
    s1 = b.update(s0, np.array([2, 2]), np.array([1.0, 3.0]))
    assert s0.pulls.sum() == 0 and s1.pulls.tolist() == [0, 0, 2] and s1.reward_sum[2] == 4.0 and s1.total == 2


def test_none_never_prefetches():
    assert PIPELINE_PREFETCH.create("none").propose(offer(), ArmStats(np.zeros(0), np.zeros(0)),
                                                     np.random.default_rng(0)).size == 0


@pytest.mark.parametrize("name", ["ucb1", "thompson"])
def test_a_prior_keeps_untried_arms_that_cannot_pay_out_and_ranks_the_rest(name):
    # arms 10..13 untried; the caller's demand estimate says only 11 and 13 can pay
    b = PIPELINE_PREFETCH.create(name, max_prefetch=4, **({"scale_s": 0.01} if name == "thompson" else {}))
    base = offer()
    o = freeze(PrefetchOffer(base.now, base.arms, base.missing_bytes, base.load_cost_s, base.free_bytes,
                             prior_reward_s=np.array([-3.0, 8.0, -20.0, 2.0])))
    got = b.propose(o, b.new_stats(), np.random.default_rng(0))
    assert got.tolist() == [1, 3]
    # without the prior every untried arm is offered (UCB1) or about half of them (Thompson)
    assert len(b.propose(base, b.new_stats(), np.random.default_rng(0))) >= (4 if name == "ucb1" else 1)
