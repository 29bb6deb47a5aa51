"""Baselines and inputs for cascade allocation: brute-force enumeration (the exact reference the
MILP is checked and timed against), DiffServe's static cascade, and a quality(t) proxy.

Why enumeration is exact: once the batch sizes and the threshold are fixed, each stage's replicas
are independent (ceil of load over per-replica throughput), so walking every (light batch, heavy
batch or none, threshold) triple and keeping the lexicographic best reproduces the MILP's optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies.cascade_allocation import (CASCADE, TOL, CascadeDecision, CascadeInputs, capacity_qps, infeasible,
                                         make_decision, quality_rank, threshold_position)


def quality_from_confidence(deferred: np.ndarray, light_confidence: np.ndarray) -> np.ndarray:
    """quality(t) from per-prompt discriminator confidence on light-model images, for each f(t).

    Reading: the discriminator's confidence is the probability that the light image is acceptable,
    and the heavy model is the reference (DiffServe's premise: it is what a deferred query gets).
    At deferral fraction f the discriminator defers the f lowest-confidence prompts, so
        quality(f) = f + (1/N) * sum of the (1 - f) N highest confidences
    = expected fraction of queries answered acceptably; non-decreasing in f, concave, 1 at f = 1.
    Fractional counts interpolate linearly. Supply measured -FID per threshold instead when known.
    """
    conf = np.sort(np.asarray(light_confidence, dtype=np.float64))[::-1]  # best first
    n = conf.size
    kept_sum = np.concatenate(([0.0], np.cumsum(conf)))  # kept_sum[m] = sum of the m best
    kept = (1.0 - np.asarray(deferred, dtype=np.float64)) * n
    return (np.asarray(deferred, dtype=np.float64) * n + np.interp(kept, np.arange(n + 1), kept_sum)) / n


def _candidates(inp: CascadeInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (li, hi, k) meeting the latency budget; hi == nh means no heavy stage (f = 0 only)."""
    nl, nh, nt = len(inp.light.batch), len(inp.heavy.batch), len(inp.thresholds)
    li, hi, k = (a.ravel() for a in np.meshgrid(np.arange(nl), np.arange(nh + 1), np.arange(nt), indexing="ij"))
    lat_h = np.append(inp.heavy.latency_s, 0.0)[hi]
    ok = (1.0 + inp.queue_factor) * (inp.light.latency_s[li] + lat_h) + inp.queue_delay_s <= inp.slo_s
    ok &= (hi < nh) | (np.asarray(inp.deferred)[k] <= 0)
    return li[ok], hi[ok], k[ok], ok


def _replicas(inp: CascadeInputs, li: np.ndarray, hi: np.ndarray, k: np.ndarray, load: float):
    nh = len(inp.heavy.batch)
    n_l = np.ceil(load * (1 - TOL) / inp.light.throughput[li])
    mu_h = np.append(inp.heavy.throughput, np.inf)[hi]
    n_h = np.where(hi < nh, np.ceil(load * (1 - TOL) * np.asarray(inp.deferred)[k] / mu_h), 0.0)
    return n_l.astype(np.int64), n_h.astype(np.int64)


def enumerate_allocation(inp: CascadeInputs, clock: Callable[[], float] | None = None) -> CascadeDecision:
    """Exact optimum of the same lexicographic objective as MilpCascade, by enumeration."""
    t0 = clock() if clock else 0.0
    inp.validate()
    li, hi, k, _ = _candidates(inp)
    if li.size == 0 or inp.gpus <= 0:
        return infeasible(inp, t0, clock)
    load = inp.demand_qps / inp.max_utilization
    status = "optimal"
    n_l, n_h = _replicas(inp, li, hi, k, load)
    if not np.any(n_l + n_h <= inp.gpus):  # over capacity: the most any triple can serve
        served = _max_served(inp, li, hi, k)
        load = float(served.max()) * (1 - 1e-7)
        if load <= 0:
            return infeasible(inp, t0, clock)
        status = "best_effort"
        n_l, n_h = _replicas(inp, li, hi, k, load)
    fits = n_l + n_h <= inp.gpus
    li, hi, k, n_l, n_h = li[fits], hi[fits], k[fits], n_l[fits], n_h[fits]
    nl, nh, nt = len(inp.light.batch), len(inp.heavy.batch), len(inp.thresholds)
    combo = (li * (nh + 1) + np.where(hi == nh, 0, hi + 1)) * nt + threshold_position(inp)[k]  # as the MILP
    best = np.lexsort((combo, n_l + n_h, -quality_rank(inp.quality)[k]))[0]
    return make_decision(inp, status, int(li[best]), None if hi[best] == nh else int(hi[best]), int(k[best]),
                         int(n_l[best]), int(n_h[best]), t0, clock)


def _max_served(inp: CascadeInputs, li: np.ndarray, hi: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Largest load each triple can carry on G GPUs, over every light/heavy split."""
    g = int(inp.gpus)
    n_l = np.arange(g + 1)[None, :]
    light = n_l * inp.light.throughput[li][:, None]
    f = np.asarray(inp.deferred)[k][:, None]
    mu_h = np.append(inp.heavy.throughput, 0.0)[hi][:, None]
    heavy = np.where(f > 0, (g - n_l) * mu_h / np.where(f > 0, f, 1.0), np.inf)
    return np.minimum(light, heavy).max(axis=1)


@CASCADE.register("static")
@dataclass(frozen=True)
class StaticCascade:
    """DiffServe's static-cascade baseline: a threshold fixed up front (default: the grid point
    deferring closest to half the queries), the batch pair with the most cascade throughput per
    GPU within the SLO, and all GPUs split in proportion to each stage's load at that threshold.
    Nothing depends on demand, which is the point of the baseline."""

    threshold: float | None = None

    def allocate(self, inp: CascadeInputs, clock: Callable[[], float] | None = None) -> CascadeDecision:
        t0 = clock() if clock else 0.0
        inp.validate()
        f_all = np.asarray(inp.deferred, dtype=np.float64)
        if self.threshold is None:
            k = int(np.argmin(np.abs(f_all - 0.5)))  # argmin: the lower threshold on ties
        else:
            k = int(np.argmin(np.abs(np.asarray(inp.thresholds) - self.threshold)))
        li, hi, kk, _ = _candidates(inp)
        li, hi = li[kk == k], hi[kk == k]
        if li.size == 0 or inp.gpus <= 0:
            return infeasible(inp, t0, clock)
        f, nh = float(f_all[k]), len(inp.heavy.batch)
        cost_h = np.where(hi < nh, f / np.append(inp.heavy.throughput, np.inf)[hi], 0.0)
        per_gpu = 1.0 / (1.0 / inp.light.throughput[li] + cost_h)  # queries/s per GPU of the pair
        best = np.lexsort((hi, li, -per_gpu))[0]
        li_b, hi_b = int(li[best]), int(hi[best])
        share_l = (1.0 / inp.light.throughput[li_b]) / (1.0 / inp.light.throughput[li_b] + cost_h[best])
        n_l = int(inp.gpus) if hi_b == nh else _split(int(inp.gpus), share_l)
        n_h = int(inp.gpus) - n_l
        hi_opt = None if hi_b == nh else hi_b
        ok = capacity_qps(inp, li_b, hi_opt, k, n_l, n_h) >= inp.demand_qps * (1 - TOL)
        return make_decision(inp, "feasible" if ok else "best_effort", li_b, hi_opt, k, n_l, n_h, t0, clock)


def _split(gpus: int, share_light: float) -> int:
    """Light replicas from a proportional split, each stage keeping at least one when it can."""
    n_l = int(round(gpus * share_light))
    return min(max(n_l, 1), gpus - 1) if gpus >= 2 else gpus
