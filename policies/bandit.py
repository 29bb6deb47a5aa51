"""Bandit prefetch of warm pipelines into a replica's idle memory (UCB1, Thompson sampling).

Why a bandit: warm pipelines (the 5-30% band) are too many to keep resident and too popular to
leave cold; whether prefetching one pays depends on when it comes back, which is learnt online.
Each arm is a pipeline. After a prefetch the caller measures the reward over its own window:

    reward = load seconds saved by hits on the prefetched pipeline - load seconds paid to fetch it

so a prefetch that is never used scores minus its cost, and arms whose estimate is not positive
are left alone: the policy only fills idle memory when it expects to gain.

The bandit forgets (discounted UCB / Thompson, after Garivier & Moulines' D-UCB, in time rather
than in pulls): with ``half_life_s`` set and the caller passing ``now`` to ``update``, every
pull and reward counted at ``t`` weighs ``2 ** (-(now - t) / half_life_s)``. Why: which warm
pipelines come back moves with popularity (a daytime spike, a model going out of fashion); a
bandit that never forgets keeps prefetching last week's favourite for as many pulls as it once
won, while the discounted one sees its evidence fade and its uncertainty bonus grow again.
Means are unchanged by the discount (sums and counts fade together); the bonus is what moves.
Without ``now`` (the old call) nothing decays.

Arm statistics are state the caller keeps (``ArmStats``, indexed by pipeline id); ``update``
returns a new object and never writes the old one, so a run can be replayed from any point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from policies.registry import Registry


@dataclass(frozen=True)
class ArmStats:
    """Per-arm pulls and reward sums, indexed by pipeline id; ``total`` = all pulls so far.

    With a forgetting bandit these are discounted to time ``t`` (NaN: no time seen yet)."""

    pulls: np.ndarray  # float64 (n_arms,)
    reward_sum: np.ndarray  # float64 (n_arms,)
    total: float = 0.0
    t: float = math.nan


@dataclass(frozen=True)
class PrefetchOffer:
    """One replica's prefetch opportunity: candidate warm pipelines and what each would take."""

    now: float
    arms: np.ndarray  # int64 (A,): candidate pipeline ids (the warm band, minus resident ones)
    missing_bytes: np.ndarray  # int64 (A,): bytes each would add to this replica's GPU
    load_cost_s: np.ndarray  # float64 (A,): seconds to load what is missing
    free_bytes: int  # idle GPU memory the prefetch may fill, never more
    # Optional (A,): the caller's estimate of each arm's reward before it is pulled (seconds,
    # e.g. expected hits x load cost - cost paid). Without it an untried arm is worth trying once
    # (UCB1: +inf; Thompson: prior mean 0); with it, an arm the demand says cannot pay is never
    # tried, which is what keeps prefetch loads from swamping a large warm band.
    prior_reward_s: np.ndarray | None = None


@runtime_checkable
class PipelinePrefetch(Protocol):
    name: ClassVar[str]

    def new_stats(self, n_arms: int = 0) -> ArmStats: ...

    def propose(self, offer: PrefetchOffer, stats: ArmStats, rng: np.random.Generator) -> np.ndarray:
        """Indices into ``offer.arms`` to prefetch, best first, fitting in ``offer.free_bytes``."""
        ...

    def update(self, stats: ArmStats, arms: np.ndarray, rewards: np.ndarray, now: float | None = None) -> ArmStats: ...


PIPELINE_PREFETCH: Registry[PipelinePrefetch] = Registry("pipeline-prefetch", discover="policies")


class _Bandit:
    """Shared state handling, forgetting and knapsack fill; subclasses only score arms.

    ``half_life_s``: seconds after which a pull's weight halves (None: never forget). It acts
    only when the caller passes ``now`` to ``update`` (and ``offer.now`` on proposals)."""

    name: ClassVar[str] = ""

    def __init__(self, max_prefetch: int = 4, half_life_s: float | None = 3600.0) -> None:
        if max_prefetch < 0:
            raise ValueError(f"max_prefetch must be >= 0, got {max_prefetch}")
        if half_life_s is not None and not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0 or None (never forget), got {half_life_s}")
        self.max_prefetch = int(max_prefetch)
        self.half_life_s = None if half_life_s is None or math.isinf(half_life_s) else float(half_life_s)

    def new_stats(self, n_arms: int = 0) -> ArmStats:
        return ArmStats(np.zeros(n_arms), np.zeros(n_arms), 0.0)

    def _fade(self, stats: ArmStats, now: float | None) -> float:
        """Weight at ``now`` of what ``stats`` counted at ``stats.t`` (1 when nothing forgets)."""
        if self.half_life_s is None or now is None or not math.isfinite(stats.t) or now <= stats.t:
            return 1.0
        return 2.0 ** (-(now - stats.t) / self.half_life_s)

    def update(self, stats: ArmStats, arms, rewards, now: float | None = None) -> ArmStats:
        """New stats with one pull of each of ``arms`` (pipeline ids) credited ``rewards`` (seconds);
        with ``now`` and a half-life, what was counted before fades to ``now`` first."""
        arms = np.atleast_1d(np.asarray(arms, dtype=np.int64))
        rewards = np.broadcast_to(np.asarray(rewards, dtype=np.float64), arms.shape)
        n = max(stats.pulls.size, int(arms.max()) + 1 if arms.size else 0)
        f = self._fade(stats, now)
        pulls, rsum = np.zeros(n), np.zeros(n)
        pulls[: stats.pulls.size], rsum[: stats.reward_sum.size] = stats.pulls, stats.reward_sum
        if f != 1.0:
            pulls *= f
            rsum *= f
        np.add.at(pulls, arms, 1.0)
        np.add.at(rsum, arms, rewards)
        t = stats.t if now is None else (float(now) if not math.isfinite(stats.t) else max(stats.t, float(now)))
        return ArmStats(pulls, rsum, stats.total * f + arms.size, t)

    def _arm_stats(self, stats: ArmStats, arms: np.ndarray, now: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray, float]:
        """(pulls, reward sums) of ``arms`` and the total pulls, faded to ``now``."""
        known = arms < stats.pulls.size
        idx = np.where(known, arms, 0)
        pulls = np.where(known, stats.pulls[idx] if stats.pulls.size else 0.0, 0.0)
        rsum = np.where(known, stats.reward_sum[idx] if stats.reward_sum.size else 0.0, 0.0)
        f = self._fade(stats, now)
        return pulls * f, rsum * f, stats.total * f

    def index(self, offer: PrefetchOffer, stats: ArmStats, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def propose(self, offer: PrefetchOffer, stats: ArmStats, rng: np.random.Generator) -> np.ndarray:
        if offer.arms.size == 0 or self.max_prefetch == 0 or offer.free_bytes <= 0:
            return np.zeros(0, dtype=np.int64)
        score = self.index(offer, stats, rng)
        order = np.lexsort((offer.arms, -score))  # best first; ties to the lower pipeline id
        out: list[int] = []
        room = int(offer.free_bytes)
        for i in order.tolist():
            if not score[i] > 0 or len(out) == self.max_prefetch:
                break
            need = int(offer.missing_bytes[i])
            if 0 < need <= room:  # already resident (0 bytes) gains nothing
                out.append(i)
                room -= need
        return np.array(out, dtype=np.int64)


@PIPELINE_PREFETCH.register("ucb1")
class UCB1(_Bandit):
    """Mean reward + ``scale_s`` x sqrt(2 ln N / n): every arm once, then optimism in uncertainty.

    Rewards are seconds, not [0, 1], so the exploration bonus is scaled by ``scale_s`` (about
    one load's worth of seconds).
    """

    name: ClassVar[str] = "ucb1"

    def __init__(self, scale_s: float = 5.0, max_prefetch: int = 4, half_life_s: float | None = 3600.0) -> None:
        super().__init__(max_prefetch, half_life_s)
        if not scale_s >= 0:
            raise ValueError(f"scale_s must be >= 0, got {scale_s}")
        self.scale_s = float(scale_s)

    def index(self, offer: PrefetchOffer, stats: ArmStats, rng: np.random.Generator) -> np.ndarray:
        pulls, rsum, total = self._arm_stats(stats, offer.arms, offer.now)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = rsum / pulls
            bonus = self.scale_s * np.sqrt(2.0 * np.log(max(total, 1.0)) / pulls)
        untried = np.inf if offer.prior_reward_s is None else offer.prior_reward_s
        return np.where(pulls > 0, mean + bonus, untried)  # untried arms first (or by their prior)


@PIPELINE_PREFETCH.register("thompson")
class Thompson(_Bandit):
    """Gaussian Thompson sampling: prior N(0, scale_s^2), noise scale_s; sample, prefetch positives.

    The posterior mean is (reward_sum + prior) / (pulls + 1) and its deviation scale_s / sqrt(pulls
    + 1), so an untried arm without a prior is drawn positive half the time and a proven loser
    almost never; the offer's ``prior_reward_s`` (default 0) is the prior mean.
    """

    name: ClassVar[str] = "thompson"

    def __init__(self, scale_s: float = 5.0, max_prefetch: int = 4, half_life_s: float | None = 3600.0) -> None:
        super().__init__(max_prefetch, half_life_s)
        if not scale_s > 0:
            raise ValueError(f"scale_s must be > 0, got {scale_s}")
        self.scale_s = float(scale_s)

    def index(self, offer: PrefetchOffer, stats: ArmStats, rng: np.random.Generator) -> np.ndarray:
        pulls, rsum, _ = self._arm_stats(stats, offer.arms, offer.now)
        prior = 0.0 if offer.prior_reward_s is None else offer.prior_reward_s
        return rng.normal((rsum + prior) / (pulls + 1.0), self.scale_s / np.sqrt(pulls + 1.0))


@PIPELINE_PREFETCH.register("none")
class NoPipelinePrefetch(_Bandit):
    """Never prefetch (Ray Serve's default: models load on first request only)."""

    name: ClassVar[str] = "none"

    def index(self, offer: PrefetchOffer, stats: ArmStats, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(offer.arms.size)
