"""The cache coordinator's control core: popularity, re-plan cadence, placement, warm arms, bandit
prefetch and its accounting, as a caller-owned state and step functions.

Two thin adapters drive the same calls: ``trace_replay/simulator/coordinator.py`` (per simulated
request and event) and ``deployments/coordinator.py`` (``CacheCoordinator``, per replica report).
Everything here is pure: time (``now``) and randomness (a ``numpy.random.Generator``) come in
as arguments, components, pipelines and replicas are dense ints (the caller interns names), and
actions go out as data. The state is mutable and updated in place, like
``policies.popularity.PopularityState``, because ``routed`` runs once per request.

Events in:

- ``routed(st, r, p, now)``: a request for pipeline ``p`` went to replica ``r`` (popularity, the
  re-plan counter, and a hit on an open prefetch of ``p`` on ``r``); O(1).
- ``tiers_changed(st, r, comps, tiers, now)``: components moved tier on ``r`` (a load, an eviction,
  a spill to host or disk); O(len(comps)). A prefetched copy that leaves the GPU before its
  pipeline came back closes its prefetch as wasted.
- ``prefetch_loaded(st, r, seconds, component=None)``: what the latest prefetch on ``r`` cost
  (all of it, or the load of one of its components), spread evenly over the pipelines it fetched.
- ``forget_replica(st, r)``: ``r`` is gone (stopped reporting); its row, pins and open prefetches go.

Steps out:

- ``tick(st, now) -> Plan | None``: re-plan when due (``replan_requests`` routed since the last
  plan, or ``replan_max_s`` passed): decayed demand and bands (``policies.popularity``), pins per
  replica and band pools (``policies.placement``), the warm arms (the warm band, most demand
  first, at most ``max_arms``), and the bandit's credit for prefetch windows that closed.
- ``idle(st, r, now, free_bytes, rng) -> Load | None``: what an idle replica should load: first
  pinned components it lacks, else (at most once per ``prefetch_interval_s``, and only with at
  least ``min_free_bytes`` free) the bandit's pick among warm pipelines whose base no replica
  holds on its GPU (``prefetch_held``: among all it lacks), into free GPU memory only.

The bandit's reward. A prefetch saves no load-seconds (the load would happen on demand anyway);
it moves a load off a request's critical path if the pipeline comes back to this replica while
the prefetched copy is still on its GPU, within ``reward_window_s``, and wastes its load
otherwise. So the reward is the cold-load seconds of what it loaded if it was used, minus the
seconds paid if not; a copy evicted before any use closes at once as wasted. The prior an
untried arm starts from is that reward's expectation under Poisson arrivals at the pipeline's
decayed rate, shared among the replicas holding its base model (P(used) = 1 - exp(-rate x window
/ (holders + 1)); prior = (2 P(used) - 1) x missing load seconds), and with ``calibrate`` P(used)
is scaled by how often closed prefetches were actually used (seen / predicted, both starting at
one pseudo-prefetch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from policies.bandit import PIPELINE_PREFETCH, ArmStats, PrefetchOffer
from policies.placement import PLACEMENT, PlacementContext, PlacementPlan
from policies.popularity import POPULARITY, PopularityState
from policies.snapshot import GPU, REMOTE, SHARED, WARM, ClusterSnapshot, ComponentTable, ReplicaTable

# open prefetch record fields (a list, not an object: hits are counted per request); PAID is the
# whole prefetch's seconds, shared by its N_ARMS pipelines when credited
T_OPEN, PAID, HITS, SAVED, P_USED, COMPS, N_ARMS = range(7)


@dataclass(frozen=True)
class Plan:
    """A re-plan's actions: the full pinned set per replica (replaces the old), band pools,
    bands per pipeline, and the replicas that lack pinned components (load them when idle)."""

    pins: list[frozenset[int]]  # per replica index: component ids to keep on its GPU
    pool: np.ndarray  # int8 (R,): HOT/WARM/COLD or SHARED
    bands: np.ndarray  # int8 (P,): HOT/WARM/COLD per pipeline id
    lacking: tuple[int, ...]  # replicas with pinned components not yet on their GPU
    placement: PlacementPlan  # the placement policy's plan, for views and tests


@dataclass(frozen=True)
class Load:
    """Components an idle replica should load now, in order (fitting its free GPU memory is the
    replica's cache's job). ``prefetch``: False for pinned components it lacks, True for the
    bandit's prefetch of the warm pipelines ``arms``."""

    components: tuple[int, ...]
    prefetch: bool
    arms: tuple[int, ...] = ()


@dataclass
class CoordinatorState:
    """Everything the coordinator learns and decides, owned by the caller, updated in place."""

    components: ComponentTable  # kinds, sizes, seconds to the GPU by tier (caller may replace it)
    pipelines: Sequence[np.ndarray]  # component ids per pipeline id, base first (may grow)
    pop: PopularityState
    stats: ArmStats
    tier: np.ndarray  # int8 (R, C): fastest tier of each component on each replica
    gpu_bytes: np.ndarray  # float64 (R,): device memory per replica for placement; 0 = not routable
    last_prefetch: list[float]  # per replica: when it last considered a prefetch (a list: read per idle)
    pins: list[frozenset[int]]
    pending: dict[int, list[int]] = field(default_factory=dict)  # pinned components to load when idle
    # per replica: pipeline -> [opened at, paid s, hits, saved s if used, predicted P(used), comps, arms]
    open: list[dict[int, list]] = field(default_factory=list)
    batch: list[tuple[int, ...]] = field(default_factory=list)  # latest prefetch's arms per replica
    batch_comps: list[frozenset[int]] = field(default_factory=list)  # and the components it loads
    closed_arms: list[int] = field(default_factory=list)  # closed, not yet credited to the bandit
    closed_rewards: list[float] = field(default_factory=list)
    since_plan: int = 0
    last_plan: float = -math.inf
    uses_predicted: float = 1.0  # calibration, one pseudo-prefetch each so the factor starts at 1
    uses_seen: float = 1.0
    used: int = 0  # prefetches closed as used / wasted (for views and metrics)
    wasted: int = 0
    warm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    warm_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    warm_base: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    warm_flat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    warm_off: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    bands: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    pool: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))

    @property
    def n_replicas(self) -> int:
        return int(self.tier.shape[0])


class Coordination:
    """The coordinator's configuration and step functions (no run-time state: see the module doc)."""

    def __init__(self, popularity: str = "decayed", popularity_args: dict | None = None,
                 placement: str = "popularity-bands", placement_args: dict | None = None,
                 prefetch: str = "ucb1", prefetch_args: dict | None = None, prefetch_interval_s: float = 600.0,
                 reward_window_s: float = 1800.0, max_arms: int = 64, replan_requests: int = 1000,
                 replan_max_s: float = 600.0, min_free_bytes: float = 5e8, calibrate: bool = True,
                 size_by_load: bool = False, target_utilisation: float = 0.5,
                 prefetch_held: bool = False) -> None:
        # min_demand: a decayed counter never reaches zero; below this a pipeline has faded and
        # leaves the ranking (else 5% of every pipeline ever seen would be "hot")
        self.pop = POPULARITY.create(popularity, **(popularity_args if popularity_args is not None
                                                    else {"half_life_s": 600.0, "min_demand": 0.05}))
        # no pre-fused pairs by default: neither adapter has a fusion mechanism to act on them
        self.placer = PLACEMENT.create(placement, **(placement_args if placement_args is not None
                                                     else {"fuse_top": 0}))
        self.bandit = PIPELINE_PREFETCH.create(prefetch, **(prefetch_args or {}))
        # a bandit that forgets is told the time of each credit (policies/bandit.py)
        self._bandit_now = getattr(self.bandit, "half_life_s", None) is not None
        if not 0 < target_utilisation <= 1:
            raise ValueError(f"target_utilisation must be in (0, 1], got {target_utilisation}")
        if replan_requests < 1 or not replan_max_s > 0 or max_arms < 0 or not reward_window_s > 0:
            raise ValueError("need replan_requests >= 1, replan_max_s > 0, max_arms >= 0, reward_window_s > 0")
        self.interval, self.window, self.max_arms = float(prefetch_interval_s), float(reward_window_s), int(max_arms)
        # Re-plan once enough demand has moved (or at the latest after replan_max_s): a quiet
        # night of a 20-day trace does not need a plan every minute, and a plan costs ms.
        self.replan_requests, self.replan_max_s = int(replan_requests), float(replan_max_s)
        self.min_free_bytes = float(min_free_bytes)  # below this there is no room worth an offer
        self.calibrate = bool(calibrate)
        self.prefetch_held = bool(prefetch_held)
        # size_by_load: hot pipelines' replica counts from the replicas the demand keeps busy at
        # target_utilisation, not from every replica (policies/placement.py demand_replicas). Off
        # by default: on katz-synth (550k, 100 GPUs) it cut load-seconds 1.30M -> 1.13M but raised
        # SLO violations 0.35% -> 1.01%, because the spare copies are what absorbs bursts.
        self.size_by_load, self.target_utilisation = bool(size_by_load), float(target_utilisation)

    # -- state ---------------------------------------------------------------------------------
    def new_state(self, n_replicas: int, components: ComponentTable, pipelines: Sequence[np.ndarray],
                  gpu_bytes=None, n_pipelines: int = 0) -> CoordinatorState:
        R, C = int(n_replicas), components.n
        gpu = np.zeros(R) if gpu_bytes is None else np.asarray(gpu_bytes, dtype=np.float64).copy()
        return CoordinatorState(
            components=components, pipelines=pipelines, pop=self.pop.new_state(n_pipelines),
            stats=self.bandit.new_stats(n_pipelines), tier=np.full((R, C), REMOTE, dtype=np.int8),
            gpu_bytes=gpu, last_prefetch=[-math.inf] * R, pins=[frozenset()] * R,
            open=[{} for _ in range(R)], batch=[()] * R, batch_comps=[frozenset()] * R,
            pool=np.full(R, SHARED, np.int8))

    def grow(self, st: CoordinatorState, n_replicas: int | None = None,
             components: ComponentTable | None = None) -> None:
        """Make room for more replicas (empty rows) and/or a larger component table."""
        R = st.n_replicas if n_replicas is None else max(int(n_replicas), st.n_replicas)
        if components is not None:
            st.components = components
        C = max(st.components.n, st.tier.shape[1])
        if (R, C) != st.tier.shape:
            tier = np.full((R, C), REMOTE, dtype=np.int8)
            tier[: st.tier.shape[0], : st.tier.shape[1]] = st.tier
            st.tier = tier
        extra = R - st.gpu_bytes.size
        if extra > 0:
            st.gpu_bytes = np.concatenate([st.gpu_bytes, np.zeros(extra)])
            st.last_prefetch = st.last_prefetch + [-math.inf] * extra
            st.pool = np.concatenate([st.pool, np.full(extra, SHARED, np.int8)])
            st.pins = st.pins + [frozenset()] * extra
            st.open = st.open + [{} for _ in range(extra)]
            st.batch = st.batch + [()] * extra
            st.batch_comps = st.batch_comps + [frozenset()] * extra

    def forget_replica(self, st: CoordinatorState, r: int) -> None:
        """Replica ``r`` is gone: it holds nothing, gets no pins, and its open prefetches are
        dropped uncredited (the replica went away, not the pipeline's demand)."""
        st.tier[r] = REMOTE
        st.gpu_bytes[r] = 0.0
        st.pins[r] = frozenset()
        st.pending.pop(r, None)
        st.open[r] = {}
        st.batch[r] = ()
        st.batch_comps[r] = frozenset()
        st.pool[r] = SHARED
        st.last_prefetch[r] = -math.inf

    # -- events --------------------------------------------------------------------------------
    def routed(self, st: CoordinatorState, r: int, p: int, now: float, used: bool | None = None) -> None:
        """A request for pipeline ``p`` went to replica ``r`` at ``now``; O(1). An open prefetch of
        ``p`` on ``r`` counts it as a hit (open = its copy is still on r's GPU: an eviction closes
        it) unless ``used`` is False: a caller that knows the request did not find the prefetched
        copy (the replica says so) says so."""
        st.since_plan += 1
        self.pop.observe(st.pop, p, now)
        rec = st.open[r].get(p)
        if rec is not None and used is not False:
            rec[HITS] += 1

    def tiers_changed(self, st: CoordinatorState, r: int, comps, tiers, now: float) -> None:
        """Components ``comps`` of replica ``r`` are now at ``tiers`` (parallel sequences)."""
        row = st.tier[r]
        opened = st.open[r]
        for c, t in zip(comps, tiers):
            if opened and row[c] == GPU and t != GPU:
                self._left_gpu(st, r, c)
            row[c] = t

    def _left_gpu(self, st: CoordinatorState, r: int, c: int) -> None:
        """Component ``c`` left ``r``'s GPU: prefetches holding it that were not used yet are wasted."""
        opened = st.open[r]
        for p in [p for p, rec in opened.items() if rec[HITS] == 0 and c in rec[COMPS]]:
            self._close(st, opened.pop(p), p)

    def _close(self, st: CoordinatorState, rec: list, p: int) -> None:
        hit = rec[HITS] > 0
        st.uses_predicted += rec[P_USED]
        st.uses_seen += hit
        st.used += hit
        st.wasted += not hit
        st.closed_arms.append(p)
        st.closed_rewards.append(rec[SAVED] if hit else -rec[PAID] / rec[N_ARMS])

    def prefetch_loaded(self, st: CoordinatorState, r: int, seconds: float, component: int | None = None) -> None:
        """Seconds replica ``r`` spent on its latest prefetch (``component``: on that one of its
        loads; a load that is not part of it, such as a pinned component, is ignored), spread over
        the pipelines it fetched."""
        arms = st.batch[r]
        if arms and (component is None or component in st.batch_comps[r]):
            for p in arms:
                rec = st.open[r].get(p)
                if rec is not None:
                    rec[PAID] += seconds

    # -- control -------------------------------------------------------------------------------
    def per_second(self) -> float:
        """Factor from a decayed count to requests per second: at steady state the count is
        rate x half-life / ln 2; 0 for popularity without decay (no rate to read)."""
        half_life = getattr(self.pop, "half_life_s", math.inf)
        return math.log(2) / half_life if math.isfinite(half_life) else 0.0

    def due(self, st: CoordinatorState, now: float) -> bool:
        """Whether ``tick`` at ``now`` re-plans (a caller may skip gathering its inputs otherwise)."""
        return st.since_plan >= self.replan_requests or now - st.last_plan >= self.replan_max_s

    def tick(self, st: CoordinatorState, now: float, mean_job_s: float | None = None) -> Plan | None:
        """Re-plan if due; None otherwise. ``mean_job_s``: mean seconds per request, for
        ``size_by_load`` (ignored without it)."""
        if not self.due(st, now):
            return None
        st.since_plan, st.last_plan = 0, now
        demand = self.pop.scores(st.pop, now)
        demand = np.where(demand >= self.pop.min_demand, demand, 0.0)  # the band ranking's view
        bands = self.pop.bands(st.pop, now)
        R = st.n_replicas
        zi, zf = np.zeros(R, np.int64), np.zeros(R)
        snap = ClusterSnapshot(now, ReplicaTable(st.tier, zi, zf, zi, zi, st.pool, zi), st.components)
        demand_replicas = None
        if self.size_by_load and mean_job_s is not None and self.per_second() > 0:
            demand_replicas = float(demand.sum()) * self.per_second() * mean_job_s / self.target_utilisation
        plan = self.placer.plan(PlacementContext(snap, demand, bands, st.pipelines,
                                                 st.gpu_bytes.astype(np.int64), demand_replicas))
        pins: list[set[int]] = [set() for _ in range(R)]
        for p, r in zip(plan.pin_pipeline.tolist(), plan.pin_replica.tolist()):
            if st.gpu_bytes[r] > 0:
                pins[r].update(st.pipelines[p].tolist())
        lacking = []
        for r in range(R):
            row = st.tier[r]
            lack = [k for k in pins[r] if row[k] != GPU]
            if lack:
                st.pending[r] = lack
                lacking.append(r)
            else:
                st.pending.pop(r, None)
        st.pins = [frozenset(s) for s in pins]
        st.pool = np.asarray(plan.pool, np.int8).copy()
        st.bands = bands
        warm = np.flatnonzero(bands == WARM)
        st.warm = warm[np.argsort(-demand[warm], kind="stable")][: self.max_arms]
        st.warm_rate = demand[st.warm] * self.per_second()
        parts = [np.asarray(st.pipelines[p], np.int64) for p in st.warm.tolist()]
        st.warm_base = np.array([int(c[0]) for c in parts], np.int64)  # base of each arm (base first)
        st.warm_flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        st.warm_off = np.concatenate([[0], np.cumsum([len(c) for c in parts])]).astype(np.int64)
        self._credit(st, now)
        return Plan(st.pins, st.pool, bands, tuple(lacking), plan)

    def _credit(self, st: CoordinatorState, now: float) -> None:
        """Close prefetch windows that ended and credit every closed prefetch to the bandit."""
        for r, opened in enumerate(st.open):
            for p in [p for p, rec in opened.items() if now - rec[T_OPEN] >= self.window]:
                self._close(st, opened.pop(p), p)
        if st.closed_arms:
            arms, rewards = np.array(st.closed_arms, np.int64), np.array(st.closed_rewards)
            st.closed_arms, st.closed_rewards = [], []
            if self._bandit_now:
                st.stats = self.bandit.update(st.stats, arms, rewards, now=now)
            else:
                st.stats = self.bandit.update(st.stats, arms, rewards)

    def idle(self, st: CoordinatorState, r: int, now: float, free_bytes: float, rng: np.random.Generator,
             active: bool = True) -> Load | None:
        """What idle replica ``r`` (``free_bytes`` of free GPU memory) should load now, if anything."""
        if st.pending:
            lack = st.pending.pop(r, None)
            if lack:
                row = st.tier[r]
                lack = [k for k in lack if row[k] != GPU]
                if lack:
                    return Load(tuple(lack), False)
        if (now - st.last_prefetch[r] < self.interval or not st.warm.size or not active
                or free_bytes < self.min_free_bytes):
            return None  # cheap exits first: this runs whenever a replica's queue empties
        st.last_prefetch[r] = now
        row = st.tier[r]
        flat, starts = st.warm_flat, st.warm_off[:-1]
        miss = row[flat] != GPU
        table = st.components
        missing = np.add.reduceat(np.where(miss, table.size_bytes[flat], 0), starts)
        cost = np.add.reduceat(np.where(miss, table.load_cost_s[flat, REMOTE], 0.0), starts)
        holders = (st.tier[:, st.warm_base] == GPU).sum(axis=0)
        p_used = -np.expm1(-st.warm_rate * self.window / (holders + 1.0))
        if self.calibrate:  # the rate model's P(used), scaled by how often its prefetches were used
            p_used = np.minimum(p_used * (st.uses_seen / st.uses_predicted), 1.0)
        # Only pipelines whose base no replica holds on its GPU, unless prefetch_held: a copy beside
        # another one moves no load off a request's path (the router sends it to the holder) and
        # is a load of its own; replicating what is held is the placement's job, by demand. In the
        # simulator (4 seeds, GenTD26 and katz-synth) offering held ones added 15-21% load-seconds
        # on GenTD26 for no fewer SLO violations; without them load-seconds are 0.98-1.003x no
        # prefetch's, violations equal or lower.
        offer_idx = np.arange(st.warm.size) if self.prefetch_held else np.flatnonzero(holders == 0)
        if not offer_idx.size:
            return None
        offer = PrefetchOffer(now, st.warm[offer_idx], missing[offer_idx].astype(np.int64), cost[offer_idx],
                              int(max(free_bytes, 0)),
                              prior_reward_s=((2.0 * p_used - 1.0) * cost)[offer_idx])
        chosen = offer_idx[self.bandit.propose(offer, st.stats, rng)].tolist()
        keys: list[int] = []
        for a in chosen:
            keys += [k for k in st.pipelines[int(st.warm[a])].tolist() if row[k] != GPU and k not in keys]
        if not keys:
            return None
        arms = tuple(int(st.warm[a]) for a in chosen)
        for a, p in zip(chosen, arms):
            st.open[r][p] = [now, 0.0, 0, float(cost[a]), float(p_used[a]),
                             frozenset(st.pipelines[p].tolist()), len(arms)]
        st.batch[r] = arms
        st.batch_comps[r] = frozenset(keys)
        return Load(tuple(keys), True, arms)

    # -- reads ---------------------------------------------------------------------------------
    def component_demand(self, st: CoordinatorState, now: float) -> np.ndarray:
        """Decayed demand per component: each pipeline still ranked (not faded) adds its demand to
        its components (what cache-aware scale-down weighs a replica's cache by)."""
        d = self.pop.scores(st.pop, now)
        out = np.zeros(st.components.n)
        for p in np.flatnonzero(d >= self.pop.min_demand).tolist():
            out[st.pipelines[p]] += d[p]
        return out

    def hit_rate(self, st: CoordinatorState) -> float | None:
        """Closed prefetches that were used, of all closed (None before any closed)."""
        n = st.used + st.wasted
        return st.used / n if n else None
