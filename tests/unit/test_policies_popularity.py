"""Decayed popularity: half-life arithmetic, O(1) updates that survive long runs, band sizes."""

from __future__ import annotations

import numpy as np
import pytest

from policies.popularity import POPULARITY, DecayedPopularity, bands_by_rank
from policies.snapshot import COLD, HOT, WARM


def test_demand_halves_after_one_half_life():
    p = POPULARITY.create("decayed", half_life_s=60.0)
    s = p.new_state()
    p.observe(s, 4, now=100.0)
    p.observe(s, 4, now=100.0)
    assert p.scores(s, 100.0)[4] == pytest.approx(2.0)
    assert p.scores(s, 160.0)[4] == pytest.approx(1.0)
    assert p.scores(s, 220.0)[4] == pytest.approx(0.5)


def test_recent_demand_outranks_old_bursts():
    """A burst an hour ago loses to a steady trickle now: the point of decaying."""
    bands = {}
    for name, kw in (("decayed", {"half_life_s": 300.0}), ("cumulative", {})):
        p = POPULARITY.create(name, hot_frac=0.5, warm_frac=0.0, **kw)
        s = p.new_state()
        p.observe(s, np.zeros(100, np.int64), now=0.0)  # id 0: 100 requests at t=0
        for t in range(3600, 3610):
            p.observe(s, 1, now=float(t))  # id 1: 10 requests an hour later
        bands[name] = p.bands(s, 3610.0).tolist()
    assert bands == {"decayed": [COLD, HOT], "cumulative": [HOT, COLD]}


def test_weights_are_rebased_instead_of_overflowing():
    p = DecayedPopularity(half_life_s=1.0)
    s = p.new_state()
    p.observe(s, 0, now=0.0)
    p.observe(s, 1, now=2000.0)  # 2**2000 would overflow without rebasing
    p.observe(s, 1, now=2001.0)
    sc = p.scores(s, 2001.0)
    assert np.isfinite(s.weight).all() and sc[1] == pytest.approx(1.5) and sc[0] == pytest.approx(0.0)


def test_band_sizes_5_25_70():
    p = POPULARITY.create("decayed")
    s = p.new_state()
    rng = np.random.default_rng(0)
    for i in rng.permutation(1000):
        p.observe(s, np.full(int(i) + 1, i), now=10.0)
    b = p.bands(s, 10.0)
    assert np.bincount(b, minlength=3).tolist() == [50, 250, 700]
    assert (np.flatnonzero(b == HOT) >= 950).all()  # the most requested ids


def test_unseen_ids_are_cold_and_small_sets_still_have_a_hot_pipeline():
    b = bands_by_rank(np.array([0.0, 3.0, 0.0, 1.0, 2.0]), 0.05, 0.25)
    assert b.tolist() == [COLD, HOT, COLD, COLD, COLD]  # 3 seen: ceil(5%) = 1 hot, ceil(30%) = 1 hot+warm
    b = bands_by_rank(np.r_[np.arange(10.0, 0.0, -1), 0.0], 0.05, 0.25)  # 10 seen: 1 hot, 2 warm
    assert b.tolist() == [HOT, WARM, WARM] + [COLD] * 8


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="hot_frac"):
        DecayedPopularity(hot_frac=0.8, warm_frac=0.5)
    with pytest.raises(ValueError, match="half_life_s"):
        DecayedPopularity(half_life_s=0)


def test_min_demand_lets_faded_pipelines_drop_out_of_the_ranking():
    p = POPULARITY.create("decayed", half_life_s=10.0, hot_frac=0.5, warm_frac=0.5, min_demand=0.1)
    s = p.new_state()
    p.observe(s, np.array([0, 1]), now=0.0)
    p.observe(s, 2, now=100.0)
    # ids 0 and 1 decayed to 2**-10 < 0.1: cold, and the 50% counts only id 2
    assert p.bands(s, 100.0).tolist() == [COLD, COLD, HOT]
    assert POPULARITY.create("decayed", half_life_s=10.0, hot_frac=0.5, warm_frac=0.5).bands(s, 100.0).tolist() \
        == [HOT, WARM, HOT]  # without the floor all three rank: ceil(50% of 3) = 2 hot
