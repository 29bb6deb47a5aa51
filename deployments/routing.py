"""Cache-aware request routing for the BaseModel deployment: a Ray Serve ``RequestRouter`` that
ranks replicas with ``policies.routing`` (the simulator's own routing code).

Ray Serve runs one router per deployment handle (in the ingress replica, or the driver) and asks
``choose_replicas`` for a ranking whenever it routes a request. This adapter turns what it knows
into a ``policies.snapshot.ClusterSnapshot`` over the candidate replicas and asks the policy named
by ``control.routing`` (default ``least-expected-latency``: queue wait plus the time to load the
missing components, by tier). What it knows, per replica:

- the replica's last ``record_routing_stats()`` (S1 in the issue-10 plan: ``t``, ``queue_len``,
  ``busy_s``, ``tiers``, ``loading``, free bytes, ``load_cost_s``, ``pool``, ``service_s``,
  ``compute_s``, ``compute_per_step_s``), which Ray delivers as ``RunningReplica.routing_stats``
  every ``request_routing_stats_period_s``. ``busy_s`` is the replica's expected drain time
  (with ``control.per_model_compute`` as the simulator's replicas report it, ``policies.drain``);
  ``compute_per_step_s`` (empty unless ``per_model_compute``) its running mean inference seconds
  per step, by base model and ControlNet count, from which a request's expected compute comes;
- the node it runs on (``RunningReplica.node_id``): replicas on one node share its processors,
  which a policy with ``host_contention`` > 0 prices (``policies.routing``), with the request's
  compute taken as the fresh replicas' mean expected compute for it;
- what this router sent since those stats were measured (a *flight* per request, recorded the
  moment Ray assigns a replica to it, dropped when the request completes or when newer stats
  cover it; before that, a request counts on the replica it was ranked first for, since Ray may
  await a queue probe between ranking and assigning): each adds its expected compute there
  (else the replica's mean service time) plus the load it was expected to pay to the replica's
  wait, so a burst spreads instead of landing
  on the one replica that held the model a period ago;
- what it routed there since the stats: those components count as resident (loading) on that
  replica until stats newer than the routing say otherwise.

Stats more than ``stale_after_s`` old (or none, or unreadable) make a replica *stale*: it is judged
by queue length only (Ray's queue-length cache, else this router's own flights), holding nothing,
and exact ties are broken at random. Requests without a ``GenerationSpec`` argument (``ready``,
``loaded_models``) are ranked by queue only. Nothing here talks to the coordinator: band pools
arrive in the stats, so a dead coordinator leaves routing on the replicas' last pools.

The ranking is every available candidate, one per rank: the policy's choice first, then the rest
by expected latency. Ray tries the ranks in order, so when the first rejects (full queue), the
fallback still follows the cache. Ranks hold one replica each because Ray picks the shortest
queue *within* a rank, which would ignore the cache.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from ray.serve._private.common import ReplicaID, RequestMetadata
from ray.serve.request_router import PendingRequest, ReplicaResult, RequestRouter, RunningReplica

from deployments.spec import GenerationSpec
from policies.routing import ROUTING, expected_latency_s
from policies.snapshot import (BASE, COLD, CONTROLNET, GPU, HOT, LORA, REMOTE, SHARED, ClusterSnapshot,
                               ComponentTable, ReplicaTable, RouteRequest)

logger = logging.getLogger("ray.serve")

ROUTER_PATH = "deployments.routing:CacheAwareRouter"
_KIND = {"base": BASE, "controlnet": CONTROLNET, "lora": LORA}
# Seconds to the GPU from GPU/HOST/DISK/REMOTE for a component no fresh replica reports a cost
# for (the replicas report every registry model, so this is for a model added since).
DEFAULT_LOAD_COST_S = (0.0, 0.5, 2.0, 10.0)
FLIGHT_TTL_S = 600.0  # a flight whose completion never came (cancelled caller) is forgotten


def router_config(config) -> dict:
    """The ``request_router_config`` deployment option for BaseModel (a ``ServeConfig`` in):
    this router, the routing policy from ``config.control``, stats every ``report_period_s``."""
    control = config.control
    period = float(control.report_period_s)
    kinds = {m.id: m.kind for m in config.models if m.kind in _KIND}
    return {"request_router_class": ROUTER_PATH,
            "request_router_kwargs": {
                "policy": control.routing, "policy_args": dict(control.routing_args),
                "stale_after_s": 3 * period + 1.0,  # three missed reports plus delivery slack
                "colocated_controlnets": config.controlnet_mode == "colocated", "kinds": kinds},
            "request_routing_stats_period_s": period}


def find_spec(pending_request: PendingRequest | None) -> GenerationSpec | None:
    """The request's ``GenerationSpec``, if one of its arguments is one. In the handle's process
    ``pending_request.args`` holds the caller's objects as passed (``handle.generate.remote(spec,
    images)`` gives ``[spec, images]``); only ``DeploymentResponse`` arguments are replaced (by
    ObjectRefs, which this router does not fetch: such a request routes by queue)."""
    if pending_request is None:
        return None
    for value in (*pending_request.args, *pending_request.kwargs.values()):
        if isinstance(value, GenerationSpec):
            return value
    return None


@dataclass
class _Flight:
    """A request this router assigned to a replica and has not seen complete."""

    request: int  # id() of the PendingRequest (Ray reuses the object on a retry)
    internal_id: str  # Ray's internal request id: shared by every handle call an ingress request
    #                   makes (copied from the request context), so not unique on its own
    routed_at: float
    components: tuple[str, ...]
    expected_s: float  # its service time plus the load it was expected to pay there
    accepted: bool = False


@dataclass
class _View:
    """What this router believes about one replica now."""

    fresh: bool
    stats_t: float
    tiers: dict[str, int] = field(default_factory=dict)  # the report's (shared: never written)
    routed: set[str] = field(default_factory=set)  # routed here since the report: counts as GPU
    wait_s: float = 0.0
    queue_len: int = 0
    pool: int = SHARED
    n_models: int = 0
    load_cost_s: dict = field(default_factory=dict)
    node: str = ""  # the Ray node it runs on ("" unknown: a machine of its own)
    compute_s: float = 0.0  # its mean compute per request (0: not reported yet)

    def tier(self, c: str) -> int:
        return GPU if c in self.routed else min(max(self.tiers.get(c, REMOTE), GPU), REMOTE)


class CacheAwareRouter(RequestRouter):
    """Ranks BaseModel replicas by ``policies.routing`` on their published cache state."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initialize_state()

    def initialize_state(self, policy: str = "least-expected-latency", policy_args: dict | None = None,
                         stale_after_s: float = 4.0, colocated_controlnets: bool = True,
                         kinds: dict | None = None, default_service_s: float = 1.0,
                         seed: int | None = None) -> None:
        """Called by Ray with ``request_router_kwargs`` (see ``router_config``)."""
        self.policy = ROUTING.create(policy, **(policy_args or {}))
        self.stale_after_s = float(stale_after_s)
        self.colocated_controlnets = bool(colocated_controlnets)
        self.kinds = {k: _KIND.get(v, BASE) for k, v in (kinds or {}).items()}
        self.default_service_s = float(default_service_s)
        self.rng = np.random.default_rng(seed)
        self._flights: dict[ReplicaID, list[_Flight]] = defaultdict(list)  # oldest first
        # the replica each request waiting for one was ranked first for: Ray may await a queue
        # probe between ranking and assigning, and concurrent routing tasks must see the choice
        self._tentative: dict[int, tuple[PendingRequest, ReplicaID, _Flight]] = {}
        self._resident: dict[ReplicaID, dict[str, float]] = defaultdict(dict)  # routed-to, when
        self._parsed: dict[ReplicaID, tuple[dict, tuple]] = {}  # last report read, and its parse
        self._warned = False

    # -- what Ray calls --------------------------------------------------------------------------
    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # after every rank was tried, Ray backs off before asking again only when told to
            # (its mixins set this); without it a request no replica accepts spins the loop
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        try:
            return [[r] for r in self.rank(candidate_replicas, pending_request)]
        except Exception:  # never fail a request over routing: queue order, ties at random
            if not self._warned:
                self._warned = True
                logger.exception("cache-aware routing failed; falling back to queue length")
            return [[r] for r in self._by_queue(candidate_replicas)]

    def _fulfill_next_pending_request(self, replica: RunningReplica,
                                      request_metadata: RequestMetadata | None = None) -> None:
        """Give ``replica`` to the request it was chosen for, and record the flight.

        Ray's base version finds that request by ``internal_request_id``, which concurrent handle
        calls from one ingress request share (a cascade's reruns): the second would never be
        matched and its routing task would spin. Here the match is the metadata object itself
        (the routing task passes the metadata of the request it routes).
        """
        if request_metadata is None:
            return
        pr = next((p for p in self._pending_requests_to_fulfill
                   if p.metadata is request_metadata and not p.future.done()), None)
        if pr is None:  # Ray's own match, should the metadata object ever be a copy
            pr = self._pending_requests_by_id.get(request_metadata.internal_request_id)
            if pr is None or pr.future.done():
                return
        self._cancel_routing_task_for_pending_request(pr)
        self._record_queue_wait_time(pr)
        pr.future.set_result(replica)
        key = pr.metadata.internal_request_id
        if self._pending_requests_by_id.get(key) is pr:
            self._pending_requests_by_id.pop(key, None)
        # Ray indexes requests by multiplexed model id too and only MultiplexMixin's matching
        # (not used here) drops the done ones: without this, a handle that sets
        # multiplexed_model_id would keep every request it ever sent
        model = pr.metadata.multiplexed_model_id
        waiting = self._pending_requests_by_model_id.get(model) if model else None
        if waiting is not None:
            while waiting and waiting[0].future.done():
                waiting.popleft()
            if not waiting:
                del self._pending_requests_by_model_id[model]
        self._record_flight(pr, replica)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        """The replica accepted: mark its flight (or record one, if assigned by another path)."""
        for f in self._flights.get(replica_id, ()):
            if f.request == id(pending_request) and not f.accepted:
                f.accepted = True
                return
        replica = self._replicas.get(replica_id)
        if replica is not None:
            self._record_flight(pending_request, replica, accepted=True)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """Finished, failed or rejected: its flight no longer adds to the replica's wait. Ray
        calls this for a rejected request too (which never got ``on_request_routed``), so an
        unaccepted flight goes first."""
        flights = self._flights.get(replica_id, [])
        mine = [i for i, f in enumerate(flights) if f.internal_id == internal_request_id]
        if mine:
            flights.pop(next((i for i in mine if not flights[i].accepted), mine[0]))

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id for r in replicas}
        for rid in [k for k in self._flights if k not in live]:
            del self._flights[rid]
        for table in (self._resident, self._parsed):
            for rid in [k for k in table if k not in live]:
                del table[rid]

    # -- ranking -------------------------------------------------------------------------------
    def rank(self, candidates: list[RunningReplica], pending_request: PendingRequest | None) -> list[RunningReplica]:
        """Available candidates (those Ray's queue cache does not show full; all if none), the
        policy's choice first, then by expected latency; full ones last, by queue."""
        if pending_request is not None:  # ranked again (after a rejection): not counted twice
            self._tentative.pop(id(pending_request), None)
        available = self.select_available_replicas(candidates) or list(candidates)
        full = [r for r in candidates if r not in available]
        now = self._get_curr_time_s()
        spec = find_spec(pending_request)
        if spec is None:
            ranked = self._by_queue(available, now) + self._by_queue(full, now)
            if pending_request is not None:
                self._hold(pending_request, ranked[0], None, (), 0.0, now)
            return ranked
        comps = self.components(spec)
        views = [self.view(r, now) for r in available]
        snap = self.snapshot(views, comps, now)
        req = RouteRequest(pipeline=0, components=np.arange(len(comps), dtype=np.int64),
                           band=self._band(views, snap), arrival_s=now,
                           compute_s=self._request_compute_s(available, views, spec))
        first = self.policy.route(snap, req, self.rng)
        cost = expected_latency_s(snap, req, getattr(self.policy, "host_contention", 0.0),
                                  getattr(self.policy, "host_slots", 0))
        order = np.lexsort((self.rng.random(cost.size), cost))  # ties at random
        order = [first] + [int(i) for i in order if i != first]
        ranked = [available[i] for i in order] + self._by_queue(full, now)
        if pending_request is not None:
            load = float(snap.missing_load_s(req.components)[first])
            self._hold(pending_request, ranked[0], spec, tuple(comps), load, now)
        return ranked

    def components(self, spec: GenerationSpec) -> list[str]:
        """Model ids the request needs on its replica: base first, then ControlNets (when the
        BaseModel replica runs them) and LoRAs, each once."""
        ids = [spec.base_model]
        if self.colocated_controlnets:
            ids += [c for c, _ in spec.controlnets]
        ids += [x for x, _ in spec.loras]
        return list(dict.fromkeys(ids))

    def view(self, replica: RunningReplica, now: float) -> _View:
        """The replica's stats, aged to ``now``, plus this router's flights since them; a replica
        whose stats are stale, missing or unreadable is judged by queue length alone."""
        try:
            view = self._fresh_view(replica, now)
        except (TypeError, ValueError, AttributeError):
            view = None
        if view is not None:
            return view
        # queue length only: Ray's cache (the replica's own count at its last response, plus
        # sends since), else this router's flights; it is assumed to hold nothing
        rid = replica.replica_id
        self._forget(rid, now - FLIGHT_TTL_S)
        cached = self.replica_queue_len_cache.get(rid)
        q = (cached if cached is not None else len(self._flights.get(rid, ()))) + len(self._held(rid))
        return _View(fresh=False, stats_t=-np.inf, wait_s=q * self.default_service_s, queue_len=q,
                     node=_node(replica))

    def _fresh_view(self, replica: RunningReplica, now: float) -> _View | None:
        stats = replica.routing_stats or {}
        t = stats.get("t")
        # a report from up to stale_after_s in the future is clock skew between nodes, not stale
        if not isinstance(t, (int, float)) or abs(now - t) > self.stale_after_s:
            return None
        t, rid = float(t), replica.replica_id
        tiers, n_models, busy, q, pool, costs = self._parse(rid, stats)
        self._forget(rid, min(t, now))  # the stats count everything routed before they were taken
        flights = [*self._flights.get(rid, ()), *self._held(rid)]
        routed = set(self._resident.get(rid, ()))
        for f in flights:
            routed.update(f.components)
        n_models += sum(1 for c in routed if tiers.get(c) != GPU and self.kinds.get(c, BASE) == BASE)
        wait = max(0.0, busy - max(0.0, now - t)) + sum(f.expected_s for f in flights)
        compute = stats.get("compute_s")
        return _View(fresh=True, stats_t=t, tiers=tiers, routed=routed, wait_s=wait,
                     queue_len=q + len(flights), pool=pool, n_models=n_models, load_cost_s=costs,
                     node=_node(replica),
                     compute_s=float(compute) if isinstance(compute, (int, float)) and compute > 0 else 0.0)

    def _parse(self, rid: ReplicaID, stats: dict) -> tuple:
        """(tiers with loads as GPU, base models on GPU, busy_s, queue_len, pool, load_cost_s) of
        one report, parsed once per report (Ray hands over a new dict when a replica reports)."""
        cached = self._parsed.get(rid)
        if cached is not None and cached[0] is stats:
            return cached[1]
        tiers = {str(k): int(v) for k, v in (stats.get("tiers") or {}).items()}
        for c in stats.get("loading") or ():
            tiers[str(c)] = GPU  # S1: a load in progress counts as resident
        costs = stats.get("load_cost_s") or {}
        if not isinstance(costs, dict):
            raise TypeError("load_cost_s must map model ids to [gpu, host, disk, remote] seconds")
        n_models = sum(1 for c, tier in tiers.items() if tier == GPU and self.kinds.get(c, BASE) == BASE)
        parsed = (tiers, n_models, float(stats.get("busy_s", 0.0)), int(stats.get("queue_len", 0)),
                  int(stats.get("pool", SHARED)), costs)
        self._parsed[rid] = (stats, parsed)
        return parsed

    def snapshot(self, views: list[_View], comps: list[str], now: float) -> ClusterSnapshot:
        """A snapshot over ``views`` whose components are just ``comps`` (a policy reads only the
        request's columns); a component's load costs are the mean over the fresh replicas that
        report them."""
        n, k = len(views), len(comps)
        tier = np.full((n, k), REMOTE, dtype=np.int8)
        for i, v in enumerate(views):
            for j, c in enumerate(comps):
                tier[i, j] = v.tier(c)
        cost = np.array([self._cost_row(views, c) for c in comps], dtype=np.float64).reshape(k, 4)
        table = ComponentTable(kind=np.array([self.kinds.get(c, BASE) for c in comps], dtype=np.int8),
                               size_bytes=np.zeros(k, np.int64), load_cost_s=cost)
        replicas = ReplicaTable(
            tier=tier, queue_len=np.array([v.queue_len for v in views], np.int64),
            busy_until=now + np.array([v.wait_s for v in views], np.float64),
            gpu_free_bytes=np.zeros(n, np.int64), host_free_bytes=np.zeros(n, np.int64),
            pool=np.array([v.pool for v in views], np.int8),
            n_models=np.array([v.n_models for v in views], np.int64), host=_hosts(views))
        return ClusterSnapshot(now, replicas, table)

    # -- helpers ---------------------------------------------------------------------------------
    def _record_flight(self, pr: PendingRequest, replica: RunningReplica, accepted: bool = False) -> None:
        self._tentative.pop(id(pr), None)
        spec = find_spec(pr)
        now = self._get_curr_time_s()
        rid = replica.replica_id
        comps = tuple(self.components(spec)) if spec is not None else ()
        expected = self._expected_s(replica, spec)
        if comps:
            view = self.view(replica, now)
            for c in comps:
                expected += float(self._cost_row([view], c)[view.tier(c)])
                self._resident[rid][c] = now
        self._flights[rid].append(_Flight(id(pr), pr.metadata.internal_request_id, now, comps,
                                          expected, accepted))

    def _hold(self, pr: PendingRequest, replica: RunningReplica, spec: GenerationSpec | None, comps: tuple,
              load_s: float, now: float) -> None:
        """Count ``pr`` (whose spec is ``spec``) on the replica ranked first for it until Ray
        assigns it somewhere."""
        expected = self._expected_s(replica, spec) + load_s
        self._tentative[id(pr)] = (pr, replica.replica_id,
                                   _Flight(id(pr), pr.metadata.internal_request_id, now, comps, expected))

    def _held(self, rid: ReplicaID) -> list[_Flight]:
        """Tentative flights on ``rid``; those of requests that are gone (cancelled) are dropped."""
        out = []
        for key, (pr, r, f) in list(self._tentative.items()):
            if pr.future.done() or f.routed_at < self._get_curr_time_s() - FLIGHT_TTL_S:
                del self._tentative[key]
            elif r == rid:
                out.append(f)
        return out

    def _forget(self, rid: ReplicaID, before: float) -> None:
        """Drop flights and routed-to residency of ``rid`` older than ``before``."""
        flights = self._flights.get(rid)
        if flights and flights[0].routed_at < before:
            flights[:] = [f for f in flights if f.routed_at >= before]
        res = self._resident.get(rid)
        if res:
            for c in [c for c, at in res.items() if at < before]:
                del res[c]

    def _request_compute_s(self, replicas: list[RunningReplica], views: list[_View],
                           spec: GenerationSpec) -> float:
        """The request's expected compute, for the contention price: the mean of the fresh
        replicas' running means for its base model and ControlNet count, else of their mean
        compute per request, else ``default_service_s``."""
        own = [c for r, v in zip(replicas, views) if v.fresh
               and (c := _compute_of(r.routing_stats, spec)) is not None]
        if own:
            return float(np.mean(own))
        measured = [v.compute_s for v in views if v.fresh and v.compute_s > 0]
        return float(np.mean(measured)) if measured else self.default_service_s

    def _expected_s(self, replica: RunningReplica, spec: GenerationSpec | None) -> float:
        """Seconds one more request adds to the replica's wait: its own expected compute there
        (the replica's running mean for its base model and ControlNet count: a heavy pipeline
        adds its seconds, a light one its fraction), else ``_service_s``."""
        own = _compute_of(replica.routing_stats, spec) if spec is not None else None
        return own if own is not None else float(self._service_s(replica))

    def _service_s(self, replica: RunningReplica) -> float:
        """Expected seconds one more request adds to the replica's queue: the stats' optional
        ``service_s``, else its busy seconds per queued request, else ``default_service_s``."""
        stats = replica.routing_stats or {}
        s = stats.get("service_s")
        if isinstance(s, (int, float)) and s > 0:
            return float(s)
        q, busy = stats.get("queue_len", 0), stats.get("busy_s", 0.0)
        if isinstance(q, int) and q > 0 and isinstance(busy, (int, float)) and busy > 0:
            return float(busy) / q
        return self.default_service_s

    def _cost_row(self, views: list[_View], c: str) -> np.ndarray:
        rows = [v.load_cost_s[c] for v in views if v.fresh and c in v.load_cost_s]
        rows = [r for r in rows if isinstance(r, (list, tuple)) and len(r) == 4]
        row = np.mean(np.array(rows, dtype=np.float64), axis=0) if rows else np.array(DEFAULT_LOAD_COST_S)
        row[GPU] = 0.0
        return row

    def _band(self, views: list[_View], snap: ClusterSnapshot) -> int:
        """The request's popularity band, as far as the replicas show it: HOT when a hot-pool
        replica holds the whole pipeline on its GPU (placement pins hot pipelines there), else
        COLD (warm and cold requests both stay on shared-pool replicas)."""
        hot = snap.replicas.pool == HOT
        if hot.any() and (snap.replicas.tier[hot] == GPU).all(axis=1).any():
            return HOT
        return COLD

    def _by_queue(self, replicas: list[RunningReplica], now: float | None = None) -> list[RunningReplica]:
        """Shortest expected queue first, exact ties at random."""
        if not replicas:
            return []
        now = self._get_curr_time_s() if now is None else now
        try:
            wait = np.array([self.view(r, now).wait_s for r in replicas])
        except Exception:
            wait = np.array([float(self.replica_queue_len_cache.get(r.replica_id) or 0) for r in replicas])
        order = np.lexsort((self.rng.random(wait.size), wait))
        return [replicas[int(i)] for i in order]


def _compute_of(stats: dict | None, spec: GenerationSpec) -> float | None:
    """``spec``'s expected compute from a replica's ``compute_per_step_s`` ({base model:
    {ControlNet count: seconds per step and image}}); None when it has no such figure."""
    table = (stats or {}).get("compute_per_step_s")
    per = table.get(spec.base_model) if isinstance(table, dict) else None
    per = per.get(str(len(spec.controlnets))) if isinstance(per, dict) else None
    if not isinstance(per, (int, float)) or not per >= 0:
        return None
    return float(per) * spec.compute_units


def _node(replica: RunningReplica) -> str:
    try:
        return str(replica.node_id or "")
    except Exception:  # a replica wrapper without a node (tests, older Ray)
        return ""


def _hosts(views: list[_View]) -> np.ndarray:
    """A machine number per view: equal for replicas on one Ray node; an unknown node is a
    machine of its own."""
    ids: dict[str, int] = {}
    out = np.empty(len(views), np.int64)
    for i, v in enumerate(views):
        out[i] = ids.setdefault(v.node, len(ids)) if v.node else -1 - i
    return out
