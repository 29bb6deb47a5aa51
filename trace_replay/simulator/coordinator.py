"""The coordinator policy set's control: popularity bands, hot-pipeline persistence, bandit prefetch.

Adapter from the simulator's state to the pure policies (they decide, this acts):
- ``policies.popularity`` (``decayed``): every routed request is observed under its pipeline id;
- ``policies.placement`` (``popularity-bands``): on each tick, a ``ClusterSnapshot`` is built from
  the workers (tier of every component on every replica) and the plan's pins become each worker's
  ``pinned`` set; pinned components it lacks are loaded when the worker is next idle;
- ``policies.bandit`` (``ucb1``): an idle worker (rate-limited) is offered the warm band's
  pipelines it lacks and fills free GPU memory only. A prefetch saves no load-seconds (the load
  would happen on demand anyway); it moves a load off a request's critical path if the pipeline
  comes back to this worker before the reward window ends, and wastes its load otherwise. So the
  reward is the cold-load seconds of what it loaded if it was used, minus the seconds paid if
  not; and the prior an untried arm starts from is that reward's expectation under Poisson
  arrivals at the pipeline's decayed rate, shared among the replicas holding its base model
  (P(used) = 1 - exp(-expected hits); prior = (2 P(used) - 1) x missing load seconds).

Pipeline ids are interned up front, vectorised: a pipeline is the set of its component keys, so
an order-free 64-bit hash (sum of per-key random words) names it.
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import numpy as np

from policies.bandit import PIPELINE_PREFETCH, PrefetchOffer
from policies.placement import PLACEMENT, PlacementContext
from policies.popularity import POPULARITY
from policies.snapshot import REMOTE, WARM
from trace_replay.simulator.config import SimConfig
from trace_replay.simulator.snapshots import component_table, snapshot
from trace_replay.simulator.worker import Worker


def pipeline_ids(offsets: np.ndarray, keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """(pipeline id per request, first request of each pipeline) from the CSR component lists."""
    words = np.random.default_rng(0x5EED).integers(1, 2**63 - 1, size=max(n_keys, 1), dtype=np.int64)
    h = np.add.reduceat(words[keys].astype(np.uint64), offsets[:-1]) if keys.size else np.zeros(0, np.uint64)
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    return inv.astype(np.int64), first.astype(np.int64)


class _Components(Sequence):
    """Lazy per-pipeline component arrays (base first), from the first request of each pipeline."""

    def __init__(self, offsets: np.ndarray, keys: np.ndarray, first: np.ndarray) -> None:
        self.o, self.k, self.first, self.cache = offsets, keys, first, {}

    def __len__(self) -> int:
        return int(self.first.size)

    def __getitem__(self, p):
        c = self.cache.get(p)
        if c is None:
            r = self.first[p]
            row = self.k[self.o[r]:self.o[r + 1]]
            c = self.cache[p] = np.concatenate([row[:1], np.unique(row[1:])])
        return c


class Coordinator:
    def __init__(self, cfg: SimConfig, popularity: str = "decayed", popularity_args: dict | None = None,
                 placement: str = "popularity-bands", placement_args: dict | None = None,
                 prefetch: str = "ucb1", prefetch_args: dict | None = None, prefetch_interval_s: float = 600.0,
                 reward_window_s: float = 1800.0, max_arms: int = 64,
                 replan_requests: int = 1000, replan_max_s: float = 600.0,
                 min_free_bytes: float = 5e8, calibrate: bool = True, size_by_load: bool = False,
                 target_utilisation: float = 0.5) -> None:
        # min_demand: a decayed counter never reaches zero; below this a pipeline has faded and
        # leaves the ranking (else 5% of every pipeline ever seen would be "hot")
        self.pop = POPULARITY.create(popularity, **(popularity_args or {"half_life_s": 600.0, "min_demand": 0.05}))
        # no pre-fused pairs: the simulator has no fusion mechanism to act on them
        self.placer = PLACEMENT.create(placement, **(placement_args or {"fuse_top": 0}))
        self.bandit = PIPELINE_PREFETCH.create(prefetch, **(prefetch_args or {}))
        self.interval, self.window, self.max_arms = prefetch_interval_s, reward_window_s, max_arms
        self.rng = np.random.default_rng(cfg.seed + 1)
        # Re-plan on a tick once enough demand has moved (or at the latest after replan_max_s):
        # a quiet night of a 20-day trace does not need a plan every minute, and a plan costs ms.
        self.replan_requests, self.replan_max_s = replan_requests, replan_max_s
        self.since_plan, self.last_plan = 0, -np.inf
        self.calibrate = calibrate
        # size_by_load: hot pipelines' replica counts from the replicas the demand keeps busy at
        # target_utilisation, not from every replica (policies/placement.py demand_replicas).
        # Off by default: on katz-synth (550k, 100 GPUs) it cut load-seconds 1.30M -> 1.13M (0.5)
        # or 1.20M (0.25) but raised SLO violations 0.35% -> 1.01% / 0.49%, because the spare
        # copies are what absorbs bursts; on GenTD26 it saved 7% of load-seconds.
        if not 0 < target_utilisation <= 1:
            raise ValueError(f"target_utilisation must be in (0, 1], got {target_utilisation}")
        self.size_by_load, self.target_utilisation = size_by_load, target_utilisation
        self.min_free_bytes = min_free_bytes  # below this there is no room worth a bandit offer

    def attach(self, sim, runtime) -> None:
        self.sim = sim
        wl = sim.wl
        self.pid, first = pipeline_ids(wl.comp_offsets, wl.comp_key, wl.n_keys)
        self.pid_list = self.pid.tolist()
        self.comps = _Components(wl.comp_offsets, wl.comp_key, first)
        P = int(first.size)
        self.state = self.pop.new_state(P)
        self.table = component_table(sim)
        self.stats = self.bandit.new_stats(P)
        self.pending: dict[int, list[int]] = {}  # worker -> pinned keys to load when idle
        # pid -> [t, paid_s, hits, saved_s, predicted P(used)]
        self.prefetched: list[dict[int, list]] = [{} for _ in sim.workers]
        # calibration of P(used): predicted and realised uses over closed prefetch windows, one
        # pseudo-prefetch each so the factor starts at 1
        self.uses_predicted, self.uses_seen = 1.0, 1.0
        self.warm = np.zeros(0, np.int64)
        self.warm_rate = np.zeros(0)
        self.warm_base: list[int] = []
        self.router = runtime.router if hasattr(runtime.router, "band") else None  # a PolicyRouter
        if self.router is not None:
            self.router.pid = self.pid_list
        self.warm_flat = np.zeros(0, np.int64)
        self.warm_off = np.zeros(1, np.int64)

    def wrap_route(self, route):
        observe, state, pids, pref = self.pop.observe, self.state, self.pid_list, self.prefetched

        def routed(i: int, comps: list, now: float) -> Worker:
            self.since_plan += 1
            p = pids[i]
            observe(state, p, now)
            w = route(i, comps, now)
            r = pref[w.idx].get(p)
            if r is not None:
                r[2] += 1
            return w

        return routed

    # -- control -------------------------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        if self.since_plan < self.replan_requests and now - self.last_plan < self.replan_max_s:
            return
        self.since_plan, self.last_plan = 0, now
        demand = self.pop.scores(self.state, now)
        demand = np.where(demand >= self.pop.min_demand, demand, 0.0)  # the band ranking's view
        bands = self.pop.bands(self.state, now)
        snap = snapshot(self.sim, now)
        ws = self.sim.workers
        gpu = np.array([w.cap_bytes if w.routable else 0 for w in ws], np.int64)
        plan = self.placer.plan(PlacementContext(snap, demand, bands, self.comps, gpu,
                                                 self._demand_replicas(demand)))
        if self.router is not None:  # band pools for policies.routing: hot pool from the plan
            self.router.band = bands
            self.router.pool[:] = plan.pool
        pins: dict[int, set[int]] = {w.idx: set() for w in ws}
        for p, r in zip(plan.pin_pipeline.tolist(), plan.pin_replica.tolist()):
            if ws[r].routable:
                pins[r].update(self.comps[p].tolist())
        for w in ws:
            w.pinned = pins[w.idx]
            lack = [k for k in w.pinned if k not in w.slot_of]
            if lack:
                self.pending[w.idx] = lack
                if not w.busy and not w.queue:
                    self.on_idle(w, now)
            else:
                self.pending.pop(w.idx, None)
        warm = np.flatnonzero(bands == WARM)
        self.warm = warm[np.argsort(-demand[warm], kind="stable")][: self.max_arms]
        self.warm_rate = demand[self.warm] * self._per_second()
        parts = [self.comps[p] for p in self.warm.tolist()]
        self.warm_base = [int(c[0]) for c in parts]  # base model of each arm (components: base first)
        self.warm_flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        self.warm_off = np.concatenate([[0], np.cumsum([len(c) for c in parts])]).astype(np.int64)
        self._credit(now)

    def _demand_replicas(self, demand: np.ndarray) -> float | None:
        """Replicas the demand keeps busy: decayed request rate x mean seconds per request
        (compute and loads so far) / target utilisation; None when sizing by all replicas."""
        to_rate = self._per_second()
        if not self.size_by_load or to_rate == 0.0:
            return None
        return float(demand.sum()) * to_rate * self.sim.mean_job_s() / self.target_utilisation

    def _per_second(self) -> float:
        """Factor from a decayed count to requests per second: at steady state the count is
        rate x half-life / ln 2; 0 for popularity without decay (no rate to read)."""
        half_life = getattr(self.pop, "half_life_s", math.inf)
        return math.log(2) / half_life if math.isfinite(half_life) else 0.0

    def component_demand(self, now: float) -> np.ndarray:
        """Decayed demand per component: each pipeline still ranked (not faded) adds its demand to its components
        (what cache-aware scale-down weighs a replica's cache by)."""
        d = self.pop.scores(self.state, now)
        out = np.zeros(self.table.n)
        for p in np.flatnonzero(d >= self.pop.min_demand).tolist():
            out[self.comps[p]] += d[p]
        return out

    def _credit(self, now: float) -> None:
        """Close prefetch windows that ended: reward = the cold-load seconds taken off a request's
        path if the pipeline came back here, else minus the seconds the unused load cost."""
        arms, rewards = [], []
        for d in self.prefetched:
            for p in [p for p, r in d.items() if now - r[0] >= self.window]:
                t, paid, hits, saved, p_pred = d.pop(p)
                self.uses_predicted += p_pred
                self.uses_seen += hits > 0
                arms.append(p)
                rewards.append(saved if hits else -paid)
        if arms:
            self.stats = self.bandit.update(self.stats, np.array(arms), np.array(rewards))

    def on_idle(self, w: Worker, now: float) -> None:
        sim = self.sim
        lack = self.pending.pop(w.idx, None)
        if lack:
            lack = [k for k in lack if k not in w.slot_of]
            if lack:
                sim.start_prefetch(w, lack, now)
                return
        if (self.warm.size == 0 or now - w.last_prefetch < self.interval or not w.active
                or w.free_bytes < self.min_free_bytes):
            return  # cheap exits first: this runs whenever a worker's queue empties
        w.last_prefetch = now
        resident = np.zeros(self.table.n, dtype=bool)
        resident[list(w.slot_of)] = True
        flat = self.warm_flat
        miss = ~resident[flat]
        size = self.table.size_bytes[flat]
        starts = self.warm_off[:-1]
        missing = np.add.reduceat(np.where(miss, size, 0), starts)
        cost = np.add.reduceat(np.where(miss, self.table.load_cost_s[flat, REMOTE], 0.0), starts)
        holders = self.sim.holders
        share = 1.0 / (np.array([len(holders[b]) for b in self.warm_base], dtype=np.float64) + 1.0)
        p_used = -np.expm1(-self.warm_rate * self.window * share)
        if self.calibrate:  # the rate model's P(used), scaled by how often its prefetches were used
            p_used = np.minimum(p_used * (self.uses_seen / self.uses_predicted), 1.0)
        offer = PrefetchOffer(now, self.warm, missing.astype(np.int64), cost, int(max(w.free_bytes, 0)),
                              prior_reward_s=(2.0 * p_used - 1.0) * cost)
        chosen = self.bandit.propose(offer, self.stats, self.rng)
        keys: list[int] = []
        for a in chosen.tolist():
            p = int(self.warm[a])
            keys += [k for k in self.comps[p].tolist() if k not in w.slot_of and k not in keys]
        if not keys:
            return
        busy_before = w.busy_s
        sim.start_prefetch(w, keys, now)
        paid = w.busy_s - busy_before
        for a in chosen.tolist():
            self.prefetched[w.idx][int(self.warm[a])] = [now, paid / len(chosen), 0, float(cost[a]),
                                                         float(p_used[a])]
