"""Bandit prefetch of warm pipelines into a replica's idle memory (UCB1, Thompson sampling).

Why a bandit: warm pipelines (the 5-30% band) are too many to keep resident and too popular to
leave cold; whether prefetching one pays depends on when it comes back, which is learnt online.
Each arm is a pipeline. After a prefetch the caller measures the reward over its own window:

    reward = load seconds saved by hits on the prefetched pipeline - load seconds paid to fetch it

so a prefetch that is never used scores minus its cost, and arms whose estimate is not positive
are left alone: the policy only fills idle memory when it expects to gain.

Arm statistics are state the caller keeps (``ArmStats``, indexed by pipeline id); ``update``
returns a new object and never writes the old one, so a run can be replayed from any point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from policies.registry import Registry


@dataclass(frozen=True)
class ArmStats:
    """Per-arm pulls and reward sums, indexed by pipeline id; ``total`` = all pulls so far."""

    pulls: np.ndarray  # float64 (n_arms,)
    reward_sum: np.ndarray  # float64 (n_arms,)
    total: float = 0.0


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

    def update(self, stats: ArmStats, arms: np.ndarray, rewards: np.ndarray) -> ArmStats: ...


PIPELINE_PREFETCH: Registry[PipelinePrefetch] = Registry("pipeline-prefetch", discover="policies")


class _Bandit:
    """Shared state handling and knapsack fill; subclasses only score arms."""

    name: ClassVar[str] = ""

    def __init__(self, max_prefetch: int = 4) -> None:
        if max_prefetch < 0:
            raise ValueError(f"max_prefetch must be >= 0, got {max_prefetch}")
        self.max_prefetch = int(max_prefetch)

    def new_stats(self, n_arms: int = 0) -> ArmStats:
        return ArmStats(np.zeros(n_arms), np.zeros(n_arms), 0.0)

    def update(self, stats: ArmStats, arms, rewards) -> ArmStats:
        """New stats with one pull of each of ``arms`` (pipeline ids) credited ``rewards`` (seconds)."""
        arms = np.atleast_1d(np.asarray(arms, dtype=np.int64))
        rewards = np.broadcast_to(np.asarray(rewards, dtype=np.float64), arms.shape)
        n = max(stats.pulls.size, int(arms.max()) + 1 if arms.size else 0)
        pulls, rsum = np.zeros(n), np.zeros(n)
        pulls[: stats.pulls.size], rsum[: stats.reward_sum.size] = stats.pulls, stats.reward_sum
        np.add.at(pulls, arms, 1.0)
        np.add.at(rsum, arms, rewards)
        return ArmStats(pulls, rsum, stats.total + arms.size)

    @staticmethod
    def _arm_stats(stats: ArmStats, arms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        known = arms < stats.pulls.size
        idx = np.where(known, arms, 0)
        pulls = np.where(known, stats.pulls[idx] if stats.pulls.size else 0.0, 0.0)
        rsum = np.where(known, stats.reward_sum[idx] if stats.reward_sum.size else 0.0, 0.0)
        return pulls, rsum

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

    def __init__(self, scale_s: float = 5.0, max_prefetch: int = 4) -> None:
        super().__init__(max_prefetch)
        if not scale_s >= 0:
            raise ValueError(f"scale_s must be >= 0, got {scale_s}")
        self.scale_s = float(scale_s)

    def index(self, offer: PrefetchOffer, stats: ArmStats, rng: np.random.Generator) -> np.ndarray:
        pulls, rsum = self._arm_stats(stats, offer.arms)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = rsum / pulls
            bonus = self.scale_s * np.sqrt(2.0 * np.log(max(stats.total, 1.0)) / pulls)
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

    def __init__(self, scale_s: float = 5.0, max_prefetch: int = 4) -> None:
        super().__init__(max_prefetch)
        if not scale_s > 0:
            raise ValueError(f"scale_s must be > 0, got {scale_s}")
        self.scale_s = float(scale_s)

    def index(self, offer: PrefetchOffer, stats: ArmStats, rng: np.random.Generator) -> np.ndarray:
        pulls, rsum = self._arm_stats(stats, offer.arms)
        prior = 0.0 if offer.prior_reward_s is None else offer.prior_reward_s
        return rng.normal((rsum + prior) / (pulls + 1.0), self.scale_s / np.sqrt(pulls + 1.0))


@PIPELINE_PREFETCH.register("none")
class NoPipelinePrefetch(_Bandit):
    """Never prefetch (Ray Serve's default: models load on first request only)."""

    name: ClassVar[str] = "none"

    def index(self, offer: PrefetchOffer, stats: ArmStats, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(offer.arms.size)
