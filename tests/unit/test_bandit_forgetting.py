"""The prefetch bandit forgets (policies/bandit.py half_life_s): when which pipeline pays moves,
the discounted bandit follows it and the one that never forgets keeps prefetching the old one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.bandit import PIPELINE_PREFETCH, ArmStats, PrefetchOffer

GB = 1_000_000_000
ARMS = np.array([10, 11])  # pipeline A, pipeline B


def play(half_life_s, before: int = 1200, after: int = 300, step_s: float = 60.0) -> list[set[int]]:
    """One offer a minute; A pays 5 s and B loses 5 s for ``before`` rounds, then the reverse
    (popularity moved). Returns the offer indices proposed each round."""
    b = PIPELINE_PREFETCH.create("ucb1", half_life_s=half_life_s)
    stats, rng, picks = b.new_stats(), np.random.default_rng(0), []
    for k in range(before + after):
        now = k * step_s
        good = 0 if k < before else 1
        got = b.propose(PrefetchOffer(now, ARMS, np.array([GB, GB]), np.ones(2), 10 * GB), stats, rng).tolist()
        picks.append(set(got))
        if got:
            stats = b.update(stats, ARMS[got], [5.0 if i == good else -5.0 for i in got], now=now)
    return picks


def share(picks: list[set[int]], arm: int) -> float:
    return float(np.mean([arm in s for s in picks]))


def test_a_forgetting_bandit_switches_arms_after_popularity_moves_and_a_remembering_one_does_not():
    forgetting, remembering = play(3600.0), play(None)
    for picks in (forgetting, remembering):  # before the move both learnt A, not B
        assert share(picks[1100:1200], 0) == 1.0 and share(picks[1100:1200], 1) < 0.2
    # five hours after the move: the discounted bandit prefetches B every round and A only when
    # its faded evidence makes it worth one more look; the other still bets on A, never on B
    assert share(forgetting[-100:], 1) == 1.0 and share(forgetting[-100:], 0) < 0.3
    assert share(remembering[-100:], 0) == 1.0 and share(remembering[-100:], 1) == 0.0


def test_discounting_keeps_means_and_fades_counts():
    b = PIPELINE_PREFETCH.create("ucb1", half_life_s=100.0)
    s = b.update(b.new_stats(), np.array([3, 3]), np.array([2.0, 4.0]), now=0.0)
    s2 = b.update(s, np.array([1]), np.array([1.0]), now=100.0)  # one half-life later
    assert s2.pulls[3] == pytest.approx(1.0) and s2.reward_sum[3] == pytest.approx(3.0)  # mean 3 kept
    assert s2.total == pytest.approx(2.0) and s2.t == 100.0
    assert s.pulls[3] == 2.0  # the old stats are not written


def test_without_a_time_nothing_fades():
    b = PIPELINE_PREFETCH.create("ucb1", half_life_s=1.0)
    s = b.update(ArmStats(np.zeros(2), np.zeros(2)), np.array([1]), np.array([1.0]))
    s = b.update(s, np.array([1]), np.array([1.0]))
    assert s.pulls[1] == 2.0 and math.isnan(s.t)


def test_half_life_must_be_positive():
    with pytest.raises(ValueError):
        PIPELINE_PREFETCH.create("thompson", half_life_s=0.0)
