"""Time-decayed popularity per pipeline (or per component) and the hot/warm/cold bands.

Demand decays exponentially: a request observed at ``t`` counts ``2 ** (-(now - t) / half_life)``
at ``now``. Why this form: it forgets a burst in a few half-lives (the trace's daytime spikes)
and, unlike a sliding window, needs no per-request history.

O(1) per request: instead of decaying every counter at every step, a request at ``t`` adds
``2 ** ((t - t0) / half_life)`` to its counter, so every counter carries the same factor
``2 ** ((now - t0) / half_life)``; reading scores divides it out once. Ranks, and therefore bands,
never need it at all. ``t0`` moves forward (one O(N) rescale) before the weights could overflow.

Bands by rank among pipelines with demand (the talk: top 5% hot, next 25% warm, rest cold);
pipelines never seen are cold. A decayed counter never reaches zero, so ``min_demand`` says when
a pipeline counts as gone (below it: cold, and not counted in the 5%/25%), otherwise every
pipeline ever seen would stay ranked. Hot and warm counts round up so a small cluster still has
a hot pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from policies.registry import Registry
from policies.snapshot import COLD, HOT, WARM

_RESCALE_AT = 512.0  # half-lives past t0 before rebasing: 2**512 is far below float64's max


@dataclass
class PopularityState:
    """Caller-owned decayed counters (mutable: ``observe`` updates it in place for O(1))."""

    weight: np.ndarray  # float64 (capacity,): demand x 2**((t_ref - t0)/half_life), see module doc
    t0: float  # reference time of the weights
    n: int  # ids seen so far are < n

    def copy(self) -> "PopularityState":
        return PopularityState(self.weight.copy(), self.t0, self.n)


class DecayedPopularity:
    """Exponentially decayed demand with a half-life; bands by rank with configurable fractions."""

    name: ClassVar[str] = "decayed"

    def __init__(self, half_life_s: float = 600.0, hot_frac: float = 0.05, warm_frac: float = 0.25,
                 min_demand: float = 0.0) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0 (use 'cumulative' for no decay), got {half_life_s}")
        if not (0 <= hot_frac <= 1 and 0 <= warm_frac <= 1 and hot_frac + warm_frac <= 1):
            raise ValueError(f"hot_frac ({hot_frac}) and warm_frac ({warm_frac}) must be in [0, 1] "
                             f"with hot_frac + warm_frac <= 1")
        if min_demand < 0:
            raise ValueError(f"min_demand must be >= 0, got {min_demand}")
        self.half_life_s = float(half_life_s)
        self.hot_frac = float(hot_frac)
        self.warm_frac = float(warm_frac)
        self.min_demand = float(min_demand)

    def new_state(self, n: int = 0, now: float = 0.0) -> PopularityState:
        return PopularityState(np.zeros(max(n, 16), dtype=np.float64), float(now), int(n))

    def _grow(self, state: PopularityState, need: int) -> None:
        if need > state.weight.size:
            w = np.zeros(max(need, 2 * state.weight.size), dtype=np.float64)
            w[: state.weight.size] = state.weight
            state.weight = w
        state.n = max(state.n, need)

    def _factor(self, state: PopularityState, now: float) -> float:
        e = (now - state.t0) / self.half_life_s
        if e > _RESCALE_AT:  # rebase: divide every weight by 2**e, once per 512 half-lives
            state.weight[: state.n] *= 2.0 ** -e
            state.t0, e = float(now), 0.0
        return 2.0 ** e

    def observe(self, state: PopularityState, ids, now: float, weight: float = 1.0) -> PopularityState:
        """Count a request for each of ``ids`` (an int or int array) at ``now``; in place, O(len(ids))."""
        f = weight * self._factor(state, now)
        if type(ids) is int:  # the per-request call: no numpy dispatch
            if ids >= state.n:
                self._grow(state, ids + 1)
            state.weight[ids] += f
            return state
        if np.ndim(ids) == 0:
            i = int(ids)
            if i >= state.n:
                self._grow(state, i + 1)
            state.weight[i] += f
            return state
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size:
            self._grow(state, int(ids.max()) + 1)
            np.add.at(state.weight, ids, f)
        return state

    def scores(self, state: PopularityState, now: float) -> np.ndarray:
        """Decayed demand of every id at ``now`` (a new array, shape (n,))."""
        return state.weight[: state.n] * 2.0 ** (-(now - state.t0) / self.half_life_s)

    def bands(self, state: PopularityState, now: float) -> np.ndarray:
        """HOT/WARM/COLD per id (int8, shape (n,)); ties in demand go to the lower id."""
        if self.min_demand > 0:  # needs true decayed values; ranks alone do not
            return bands_by_rank(self.scores(state, now), self.hot_frac, self.warm_frac, self.min_demand)
        return bands_by_rank(state.weight[: state.n], self.hot_frac, self.warm_frac)


class CumulativePopularity(DecayedPopularity):
    """Request counts that never decay: the frequency baseline the decayed tracker must beat."""

    name: ClassVar[str] = "cumulative"

    def __init__(self, hot_frac: float = 0.05, warm_frac: float = 0.25, min_demand: float = 0.0) -> None:
        super().__init__(half_life_s=1.0, hot_frac=hot_frac, warm_frac=warm_frac, min_demand=min_demand)
        self.half_life_s = math.inf

    def _factor(self, state: PopularityState, now: float) -> float:
        return 1.0

    def scores(self, state: PopularityState, now: float) -> np.ndarray:
        return state.weight[: state.n].copy()


def bands_by_rank(demand: np.ndarray, hot_frac: float, warm_frac: float, min_demand: float = 0.0) -> np.ndarray:
    """Band codes for ``demand``: top ``ceil(hot_frac*m)`` hot, next up to ``ceil((hot+warm)*m)`` warm,
    where m counts the ids with positive demand of at least ``min_demand``; the rest cold."""
    out = np.full(demand.shape[0], COLD, dtype=np.int8)
    seen = np.flatnonzero((demand > 0) & (demand >= min_demand))
    m = seen.size
    if m == 0:
        return out
    order = seen[np.lexsort((seen, -demand[seen]))]  # most demand first, ties to the lower id
    n_hot = math.ceil(hot_frac * m - 1e-9)
    n_warm = min(m, math.ceil((hot_frac + warm_frac) * m - 1e-9)) - n_hot
    out[order[:n_hot]] = HOT
    out[order[n_hot: n_hot + n_warm]] = WARM
    return out


POPULARITY: Registry[DecayedPopularity] = Registry("popularity", discover="policies")
POPULARITY.register("decayed", DecayedPopularity)
POPULARITY.register("cumulative", CumulativePopularity)
