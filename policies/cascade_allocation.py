"""Cascade allocation: replicas per stage, batch sizes and deferral threshold, as one MILP.

The formulation follows DiffServe (Ahmad et al., "DiffServe: Efficiently Serving Text-to-Image
Diffusion Models with Query-Aware Model Scaling", arXiv 2411.15381, resource allocator): a light
model answers every query, a discriminator scores its image, queries scored below threshold t go
to the heavy model; the fraction deferred is f(t). DiffServe solves it with Gurobi (bilinear
constraints); here every product is linearised so scipy's HiGHS (`scipy.optimize.milp`) solves it.

Variables (one MILP per solve when demand fits; see below for overload):
  zL[b], zH[b]   one-hot batch size of the light / heavy stage; zH also has a "none" option,
                 allowed only for thresholds with f(t) = 0 (no heavy stage needed at all);
  y[k]           one-hot threshold from the grid;
  nL[b], nH[b]   integer replicas running batch size b. Disaggregating replicas by batch size
                 (nL[b] <= M_b zL[b]; M_b = min(G, replicas batch b needs for all the load))
                 is what makes "replicas x throughput(batch)" linear.
Constraints:
  light throughput  sum_b mu_L(b) nL[b] >= D / rho           (every query sees the light stage)
  heavy throughput  sum_b mu_H(b) nH[b] >= (D / rho) sum_k f_k y[k]
  latency           (1 + qf) (sum_b lat_L(b) zL[b] + sum_b lat_H(b) zH[b]) + q0 <= SLO
                    a deferred query crosses both stages and, as in DiffServe, waits about one batch
                    in flight per stage before its own (qf = 1); q0 is measured queueing delay
                    (Little's law, as DiffServe's controller does), 0 by default
  capacity          sum nL + sum nH <= G
Objective: maximise quality(t), then lexicographically fewer GPUs, then smaller batches, so the
optimum is unique. Quality enters as its dense rank (only its order matters in a lexicographic
objective), which keeps every objective coefficient an integer: no tie-break weight can be lost
in the solver's tolerances. Thresholds that cannot win (an equal-or-better one defers no more)
are fixed to 0 before the solve, so each remaining rank is one threshold (pareto_thresholds).

Demand above capacity: a first MILP maximises the served rate s (s_k <= D y[k] carries the
threshold choice linearly); the allocation is then the normal MILP at demand s, status
"best_effort". No configuration meeting the SLO at all: status "infeasible", zero replicas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from policies.registry import Registry

TOL = 1e-9  # relative slack on throughput, so replicas = ceil(load) exactly at integral loads


@dataclass(frozen=True)
class StageProfile:
    """Batch latency of one cascade stage on one GPU: ``latency_s[i]`` for ``batch[i]``."""

    batch: np.ndarray  # int, ascending, >= 1
    latency_s: np.ndarray  # seconds per batch

    @property
    def throughput(self) -> np.ndarray:
        return self.batch / self.latency_s


def fold_discriminator(light: StageProfile, disc: StageProfile) -> StageProfile:
    """The discriminator runs on the light replica right after each batch (as in DiffServe),
    so the light stage's batch latency is generation plus scoring of the same batch."""
    extra = np.interp(light.batch, disc.batch, disc.latency_s)
    return StageProfile(light.batch.copy(), light.latency_s + extra)


@dataclass(frozen=True)
class CascadeInputs:
    """One allocation problem: a frozen snapshot the caller builds (profiles, f(t) and quality(t)
    from DiffServe's files via benchmarks.cascade_milp.diffserve_inputs, or measured live)."""

    demand_qps: float
    gpus: int
    slo_s: float
    light: StageProfile  # discriminator folded in (fold_discriminator)
    heavy: StageProfile
    thresholds: np.ndarray  # grid of t
    deferred: np.ndarray  # f(t): fraction of queries deferred to the heavy model
    quality: np.ndarray  # quality(t), higher is better (pass -FID for FID points)
    queue_delay_s: float = 0.0  # measured queueing delay (Little's law), on top of the model
    queue_factor: float = 1.0  # batches waited per stage before one's own: DiffServe's 2x
    max_utilization: float = 1.0  # throughput must cover demand / this (1.0 = DiffServe)

    def validate(self) -> None:
        k = len(self.thresholds)
        if not (len(self.deferred) == len(self.quality) == k and k > 0):
            raise ValueError(f"thresholds, deferred and quality must have one length; got "
                             f"{k}, {len(self.deferred)}, {len(self.quality)}")
        if np.any((self.deferred < 0) | (self.deferred > 1)):
            raise ValueError("deferred must lie in [0, 1]")
        if self.gpus < 0 or self.demand_qps < 0 or self.slo_s <= 0:
            raise ValueError(f"need gpus >= 0, demand_qps >= 0, slo_s > 0; got gpus={self.gpus}, "
                             f"demand_qps={self.demand_qps}, slo_s={self.slo_s}")
        if not np.all(np.isfinite(self.quality)):
            raise ValueError("quality must be finite (pass -FID, not NaN, for thresholds without FID)")
        for name, st in (("light", self.light), ("heavy", self.heavy)):
            if not (len(st.batch) == len(st.latency_s) > 0 and np.all(st.batch >= 1) and np.all(st.latency_s > 0)):
                raise ValueError(f"{name}: batch and latency_s need one length, batch >= 1, latency_s > 0")
        if not 0 < self.max_utilization <= 1:
            raise ValueError(f"max_utilization must lie in (0, 1]; got {self.max_utilization}")


@dataclass(frozen=True)
class CascadeDecision:
    # "optimal" | "feasible" (a heuristic met demand) | "best_effort" (demand over capacity: serves
    # served_qps) | "infeasible" (nothing meets the SLO) | "time_limit" (HiGHS stopped early)
    status: str
    light_replicas: int
    heavy_replicas: int
    light_batch: int
    heavy_batch: int  # 0: no heavy stage (nothing deferred)
    threshold_index: int
    threshold: float
    deferred_fraction: float
    expected_quality: float
    expected_latency_s: float  # modelled latency of a deferred query (the SLO-binding path)
    served_qps: float  # demand_qps unless best_effort
    solve_time_s: float = field(default=float("nan"), compare=False)  # via the injected clock

    @property
    def gpus_used(self) -> int:
        return self.light_replicas + self.heavy_replicas


class CascadeAllocator(Protocol):
    def allocate(self, inputs: CascadeInputs, clock: Callable[[], float] | None = None) -> CascadeDecision: ...


CASCADE: Registry[CascadeAllocator] = Registry("cascade", discover="policies")


def quality_rank(quality: np.ndarray) -> np.ndarray:
    """Dense rank (0 = worst); values within 1e-9 of each other count as equal."""
    order = np.sort(np.asarray(quality, dtype=np.float64))
    distinct = order[np.concatenate(([True], np.diff(order) > 1e-9))]
    return np.searchsorted(distinct, np.asarray(quality) - 1e-9, side="left").astype(np.int64)


def threshold_position(inp: CascadeInputs) -> np.ndarray:
    """Tie-break rank of each threshold among equal quality: less deferral first, then lower t."""
    nt = len(inp.thresholds)
    pos = np.empty(nt, dtype=np.int64)
    pos[np.lexsort((np.arange(nt), np.asarray(inp.deferred)))] = np.arange(nt)
    return pos


def pareto_thresholds(inp: CascadeInputs) -> np.ndarray:
    """Mask of thresholds that can be optimal. k is dropped when an earlier one in tie-break order
    (so deferring no more) has at least its quality: that one is feasible whenever k is and wins
    under any batch sizes. Equal-quality plateaus (f(t) = 1 for every t >= 0.6 in DiffServe's
    curve) are symmetric choices that otherwise cost HiGHS branch-and-bound nodes."""
    rank = quality_rank(inp.quality)
    order = np.argsort(threshold_position(inp))
    best_before = np.maximum.accumulate(np.concatenate(([-1], rank[order][:-1])))
    keep = np.zeros(len(rank), dtype=bool)
    keep[order] = rank[order] > best_before
    return keep


def stage_latency(inp: CascadeInputs, light_batch_i: int, heavy_batch_i: int | None) -> float:
    """Modelled latency of a deferred query; heavy_batch_i None = no heavy stage."""
    lat = inp.light.latency_s[light_batch_i] + (0.0 if heavy_batch_i is None else inp.heavy.latency_s[heavy_batch_i])
    return (1.0 + inp.queue_factor) * float(lat) + inp.queue_delay_s


def capacity_qps(inp: CascadeInputs, li: int, hi: int | None, k: int, n_l: int, n_h: int) -> float:
    """Arrival rate a configuration carries: the tighter stage, at the utilisation cap."""
    cap = n_l * float(inp.light.throughput[li])
    f = float(inp.deferred[k])
    if hi is not None and f > 0:
        cap = min(cap, n_h * float(inp.heavy.throughput[hi]) / f)
    return cap * inp.max_utilization


def make_decision(inp: CascadeInputs, status: str, li: int, hi: int | None, k: int, n_l: int, n_h: int,
                  t0: float, clock: Callable[[], float] | None) -> CascadeDecision:
    """The decision for a configuration; served_qps is demand, or under best_effort what the
    configuration carries (computed here so every allocator reports it identically)."""
    served = inp.demand_qps if status != "best_effort" else min(inp.demand_qps, capacity_qps(inp, li, hi, k, n_l, n_h))
    return CascadeDecision(
        status=status, light_replicas=int(n_l), heavy_replicas=int(n_h),
        light_batch=int(inp.light.batch[li]), heavy_batch=0 if hi is None else int(inp.heavy.batch[hi]),
        threshold_index=int(k), threshold=float(inp.thresholds[k]), deferred_fraction=float(inp.deferred[k]),
        expected_quality=float(inp.quality[k]), expected_latency_s=stage_latency(inp, li, hi),
        served_qps=float(served), solve_time_s=(clock() - t0) if clock else float("nan"))


def infeasible(inp: CascadeInputs, t0: float, clock: Callable[[], float] | None) -> CascadeDecision:
    # no NaN in compared fields: two infeasible answers to the same inputs must compare equal
    return CascadeDecision("infeasible", 0, 0, 0, 0, -1, -1.0, 0.0, -np.inf, np.inf, 0.0,
                           (clock() - t0) if clock else float("nan"))


def relaxed_capacity(inp: CascadeInputs) -> float:
    """Upper bound on the load G GPUs can carry within the SLO (fractional replicas: the best
    per-GPU cascade throughput of any latency-feasible batch pair and threshold, times G)."""
    f = np.asarray(inp.deferred, dtype=np.float64)
    ok = (1.0 + inp.queue_factor) * (inp.light.latency_s[:, None] + np.append(inp.heavy.latency_s, 0.0)[None, :])
    ok = ok + inp.queue_delay_s <= inp.slo_s  # (light batch, heavy batch or none)
    cost_h = f[None, :] / np.append(inp.heavy.throughput, np.inf)[:, None]  # GPU-s per query, (heavy, k)
    cost_h[-1, f > 0] = np.inf  # no heavy stage only where nothing is deferred
    per_gpu = 1.0 / (1.0 / inp.light.throughput[:, None, None] + cost_h[None, :, :])
    per_gpu = np.where(ok[:, :, None], per_gpu, 0.0)
    return float(per_gpu.max(initial=0.0)) * inp.gpus * (1 + 1e-9)


class _Layout:
    """Column indices of the MILP's variables: nL | nH | zL | zH | zH_none | y | (s)."""

    def __init__(self, n_l: int, n_h: int, n_t: int, served: bool) -> None:
        self.nL = np.arange(n_l)
        self.nH = n_l + np.arange(n_h)
        self.zL = n_l + n_h + np.arange(n_l)
        self.zH = 2 * n_l + n_h + np.arange(n_h)
        self.none = 2 * n_l + 2 * n_h
        self.y = self.none + 1 + np.arange(n_t)
        self.s = self.y[-1] + 1 + np.arange(n_t) if served else np.arange(0)
        self.size = int(self.y[-1] + 1 + (n_t if served else 0))


@CASCADE.register("milp")
@dataclass(frozen=True)
class MilpCascade:
    """The DiffServe-style allocator on HiGHS (see the module docstring)."""

    time_limit_s: float = 5.0

    def allocate(self, inp: CascadeInputs, clock: Callable[[], float] | None = None) -> CascadeDecision:
        t0 = clock() if clock else 0.0
        inp.validate()
        load = inp.demand_qps / inp.max_utilization
        if load <= relaxed_capacity(inp):  # else no integer answer exists: skip the doomed solve
            sol, proven = self._solve(inp, load, served=False)
            if sol is not None:
                return self._decode(inp, sol, "optimal" if proven else "time_limit", t0, clock)
        best, _ = self._solve(inp, load, served=True)  # demand too high: the most it can serve
        if best is None:
            return infeasible(inp, t0, clock)
        lay = _Layout(len(inp.light.batch), len(inp.heavy.batch), len(inp.thresholds), True)
        served_load = float(best[lay.s].sum()) * (1 - 1e-7)  # a hair under, so the re-solve is feasible
        if served_load <= 0:
            return infeasible(inp, t0, clock)
        sol, _ = self._solve(inp, served_load, served=False)
        if sol is None:  # cannot happen unless the solver misreports; fail loudly rather than guess
            raise RuntimeError(f"cascade MILP: served rate {served_load} from phase 1 is infeasible in phase 2")
        return self._decode(inp, sol, "best_effort", t0, clock)

    def _solve(self, inp: CascadeInputs, load: float, served: bool) -> tuple[np.ndarray | None, bool]:
        """Solution vector (None if infeasible) and whether HiGHS proved it optimal."""
        # imported here: registry discovery imports every policies module, most never solve
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_array

        nl, nh, nt, g = len(inp.light.batch), len(inp.heavy.batch), len(inp.thresholds), int(inp.gpus)
        lay = _Layout(nl, nh, nt, served)
        f = np.asarray(inp.deferred, dtype=np.float64)
        mu_l, mu_h = inp.light.throughput, inp.heavy.throughput
        # Big-M per batch size: at most G, and (when demand is fixed) never more replicas than that
        # batch needs for the whole load, since extra GPUs only cost objective. A tight M is what
        # keeps the LP relaxation, and so HiGHS's branch and bound, small.
        m_l, m_h = np.full(nl, float(g)), np.full(nh, float(g))
        if not served:
            m_l = np.minimum(m_l, np.ceil(load * (1 - TOL) / mu_l))
            m_h = np.minimum(m_h, np.ceil(load * (1 - TOL) * f.max() / mu_h))
        tri_r: list[np.ndarray] = []
        tri_c: list[np.ndarray] = []
        tri_v: list[np.ndarray] = []
        lo: list[float] = []
        hi: list[float] = []

        def row(cols: np.ndarray | list[int], vals: np.ndarray | list[float] | float, lb: float, ub: float) -> None:
            cols = np.atleast_1d(np.asarray(cols, dtype=np.int64))
            tri_r.append(np.full(cols.size, len(lo)))
            tri_c.append(cols)
            tri_v.append(np.broadcast_to(np.asarray(vals, dtype=np.float64), cols.shape))
            lo.append(lb)
            hi.append(ub)

        row(lay.zL, 1.0, 1, 1)  # one batch size per stage (or no heavy stage), one threshold
        row(np.append(lay.zH, lay.none), 1.0, 1, 1)
        row(lay.y, 1.0, 1, 1)
        for n_idx, z_idx, big_m in ((lay.nL, lay.zL, m_l), (lay.nH, lay.zH, m_h)):
            for n_j, z_j, m in zip(n_idx, z_idx, big_m):  # replicas only at the chosen batch size
                row([n_j, z_j], [1.0, -m], -np.inf, 0)
        no_defer = np.flatnonzero(f <= 0)  # "no heavy stage" only for thresholds deferring nothing
        row(np.append(lay.none, lay.y[no_defer]), np.append(1.0, -np.ones(no_defer.size)), -np.inf, 0)
        if served:  # demand is a variable: s_k <= load y_k, light >= sum s, heavy >= sum f_k s_k
            for k in range(nt):
                row([lay.s[k], lay.y[k]], [1.0, -load], -np.inf, 0)
            row(np.append(lay.nL, lay.s), np.append(mu_l, -np.ones(nt)), 0, np.inf)
            row(np.append(lay.nH, lay.s), np.append(mu_h, -f), 0, np.inf)
        else:
            row(lay.nL, mu_l, load * (1 - TOL), np.inf)
            row(np.append(lay.nH, lay.y), np.append(mu_h, -load * (1 - TOL) * f), 0, np.inf)
        w = 1.0 + inp.queue_factor
        row(np.append(lay.zL, lay.zH), w * np.append(inp.light.latency_s, inp.heavy.latency_s),
            -np.inf, inp.slo_s - inp.queue_delay_s)
        row(np.append(lay.nL, lay.nH), 1.0, -np.inf, g)
        a = coo_array((np.concatenate(tri_v), (np.concatenate(tri_r), np.concatenate(tri_c))),
                      shape=(len(lo), lay.size)).tocsr()

        c = np.zeros(lay.size)
        if served:
            c[lay.s] = -1.0  # phase 1: only the served rate matters
        else:
            # Among the Pareto thresholds each quality rank occurs once, so no threshold tie-break
            # is needed here (see pareto_thresholds); keeping the weights small keeps HiGHS happy.
            pairs = nl * (nh + 1)
            c[lay.zL] = np.arange(nl) * (nh + 1)  # smaller batches first (lower latency) ...
            c[lay.zH] = np.arange(nh) + 1
            c[np.concatenate([lay.nL, lay.nH])] = pairs  # ... after fewer GPUs ...
            c[lay.y] = -quality_rank(inp.quality) * float((g + 1) * pairs)  # ... after quality
        ub = np.ones(lay.size)
        ub[lay.nL], ub[lay.nH] = m_l, m_h
        ub[lay.y[~pareto_thresholds(inp)]] = 0  # dominated thresholds: presolve drops them
        if served:
            ub[lay.s] = load
        integrality = np.ones(lay.size)
        integrality[lay.s] = 0
        res = milp(c, constraints=LinearConstraint(a, np.array(lo), np.array(hi)), integrality=integrality,
                   bounds=Bounds(np.zeros(lay.size), ub),
                   options={"mip_rel_gap": 0.0, "time_limit": self.time_limit_s, "presolve": True})
        if res.x is None and res.status != 2:  # 2 = infeasible; anything else is not an answer
            raise RuntimeError(f"cascade MILP: HiGHS returned no solution ({res.message}); "
                               f"time_limit_s={self.time_limit_s}")
        return (None if res.x is None else np.asarray(res.x)), res.status == 0

    @staticmethod
    def _decode(inp: CascadeInputs, x: np.ndarray, status: str, t0: float,
                clock: Callable[[], float] | None) -> CascadeDecision:
        lay = _Layout(len(inp.light.batch), len(inp.heavy.batch), len(inp.thresholds), False)
        li = int(np.argmax(x[lay.zL]))
        hi = None if x[lay.none] > 0.5 else int(np.argmax(x[lay.zH]))
        k = int(np.argmax(x[lay.y]))
        n_l, n_h = int(round(x[lay.nL].sum())), int(round(x[lay.nH].sum()))
        return make_decision(inp, status, li, hi, k, n_l, n_h, t0, clock)
