"""Popularity skew: Gini coefficient, top-k share, Lorenz curve, and counts with a target skew."""

from __future__ import annotations

import math

import numpy as np


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of the counts of the items that occur (0 = equal, -> 1 = one item)."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    c = c[c > 0]
    n = c.size
    if n == 0 or c.sum() == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(2.0 * np.sum(i * c) / (n * c.sum()) - (n + 1) / n)


def top_share(counts: np.ndarray, frac: float = 0.05) -> float:
    """Share of all requests that go to the top ``frac`` of items (at least one item)."""
    c = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    k = max(1, math.ceil(frac * c.size))
    return float(c[:k].sum() / c.sum())


def top_k_share(counts: np.ndarray, k: int) -> float:
    c = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    return float(c[:k].sum() / c.sum()) if c.sum() else 0.0


def lorenz(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of items, share of requests), items sorted from least to most popular."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    c = c[c > 0]
    x = np.linspace(0.0, 1.0, c.size + 1)
    y = np.concatenate([[0.0], np.cumsum(c) / max(c.sum(), 1.0)])
    return x, y


def _apportion(total: int, weights: np.ndarray, minimum: int) -> np.ndarray:
    """Integer counts summing to ``total``, each >= minimum, proportional to weights otherwise."""
    spare = total - minimum * weights.size
    raw = spare * weights / weights.sum()
    out = np.floor(raw).astype(np.int64)
    short = spare - int(out.sum())
    if short:
        out[np.argsort(-(raw - out), kind="stable")[:short]] += 1  # largest remainders
    return out + minimum


def skewed_counts(n: int, m: int, target_gini: float, target_top: float, top_frac: float = 0.05,
                  tol: float = 0.005) -> np.ndarray:
    """Request counts for m items (most popular first) with the given Gini and top-share.

    The top ``ceil(top_frac*m)`` items get exactly ``target_top`` of the n requests; within the
    head and within the tail, counts fall off as rank^-a, and ``a`` is found by bisection so the
    Gini of the *realised integer counts* hits the target (every item gets at least one request,
    so the Gini measured on a trace, which only sees items that occur, is the one asked for).
    """
    h = max(1, math.ceil(top_frac * m))
    head_n = round(target_top * n)
    if m < 2 or h >= m or head_n < h or n - head_n < m - h:
        raise ValueError(f"cannot give {m} items top-{top_frac:.0%} share {target_top} with {n} requests")
    ranks = np.arange(1, m + 1, dtype=np.float64)
    errors = []
    # The head must stay above the tail or the top items are not the head. A steep head can dip
    # below the tail's first items when requests are few per item, so the head is flattened
    # (its exponent a fraction rho of the tail's) until the realised top share holds.
    for rho in (1.0, 0.75, 0.5, 0.3, 0.15, 0.0):
        def counts(a: float) -> np.ndarray:
            return np.concatenate([_apportion(head_n, ranks[:h] ** (-a * rho), 1),
                                   _apportion(n - head_n, ranks[h:] ** -a, 1)])

        lo, hi = 0.0, 12.0
        g_lo, g_hi = gini(counts(lo)), gini(counts(hi))
        if not g_lo - tol <= target_gini <= g_hi + tol:
            errors.append(f"rho {rho}: reachable Gini [{g_lo:.3f}, {g_hi:.3f}]")
            continue
        for _ in range(60):
            mid = (lo + hi) / 2
            if gini(counts(mid)) < target_gini:
                lo = mid
            else:
                hi = mid
        best = min((counts(lo), counts(hi)), key=lambda c: abs(gini(c) - target_gini))
        got_top, got_gini = top_share(best, top_frac), gini(best)
        if abs(got_top - target_top) <= tol and abs(got_gini - target_gini) <= tol:
            return best
        errors.append(f"rho {rho}: gini {got_gini:.3f}, top share {got_top:.3f}")
    raise ValueError(f"cannot reach gini {target_gini} with top-{top_frac:.0%} share {target_top} over {m} items "
                     f"and {n} requests ({'; '.join(errors)}); use fewer items or more requests")
