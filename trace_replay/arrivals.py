"""Seeded arrival processes for traces that carry only row order.

A non-homogeneous Poisson process conditioned on its count is n i.i.d. draws from the normalised
rate, sorted; that is how every process here is drawn, so a trace of n rows gets exactly n
arrivals and the same seed gives the same times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RateShape:
    """Piecewise-constant rate: ``rate[i]`` requests/s over ``[edges[i], edges[i+1])``."""

    edges: np.ndarray  # seconds, len = len(rate) + 1
    rate: np.ndarray

    @property
    def duration(self) -> float:
        return float(self.edges[-1] - self.edges[0])

    def mean_rate(self) -> float:
        return float(np.sum(self.rate * np.diff(self.edges)) / self.duration)

    def scaled_to(self, duration: float) -> RateShape:
        """Same shape stretched to ``duration`` seconds starting at 0; the mass is preserved."""
        f = duration / self.duration
        return RateShape((self.edges - self.edges[0]) * f, self.rate / f)


def shape_from_samples(t: np.ndarray, value: np.ndarray, window_s: float = 300.0) -> RateShape:
    """Cluster-total rate from per-container samples (the GenTD26 metric layout).

    Values at the same timestamp are summed across containers; a sample stands for one sampling
    step (the median spacing of distinct timestamps), so a gap with no sample counts as zero load.
    """
    if t.size == 0:
        raise ValueError("no samples to build a rate shape from")
    ts, inv = np.unique(t, return_inverse=True)
    total = np.bincount(inv, weights=value)
    step = float(np.median(np.diff(ts))) if ts.size > 1 else window_s
    edges = np.arange(ts[0], ts[-1] + step + window_s, window_s)
    win = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, edges.size - 2)
    rate = np.bincount(win, weights=total * step, minlength=edges.size - 1) / window_s
    return RateShape(edges, rate)


def draw_arrivals(n: int, shape: RateShape, rng: np.random.Generator) -> np.ndarray:
    """n sorted arrival times (seconds) from a Poisson process with the given rate shape."""
    mass = shape.rate * np.diff(shape.edges)
    if n and mass.sum() <= 0:
        raise ValueError("rate shape has no mass: cannot draw arrivals")
    cdf = np.cumsum(mass) / mass.sum()
    window = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), cdf.size - 1)
    lo, width = shape.edges[window], np.diff(shape.edges)[window]
    return np.sort(lo + rng.random(n) * width)


def homogeneous(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """n arrivals of a homogeneous Poisson process (exponential gaps) starting at 0."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def gamma_renewal(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """n arrivals starting at 0 with gamma inter-arrival gaps of mean 1/rate and coefficient of
    variation ``cv``: cv = 1 is Poisson, cv > 1 burstier (the load-sweep knob of serving
    benchmarks), cv < 1 more regular."""
    if rate <= 0 or cv <= 0:
        raise ValueError(f"rate and cv must be positive, got rate={rate}, cv={cv}")
    shape = 1.0 / (cv * cv)
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])]) if n else np.zeros(0)
