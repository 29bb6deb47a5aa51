"""Routing: which replica serves a request.

- ``least-expected-latency`` (ours): expected latency = queue wait + time to load what the
  replica lacks, lowest wins. With ``slack_s`` > 0 a request accepts up to that many seconds
  more expected latency to avoid loads: among replicas within ``slack_s`` of the best, the one
  with the least to load wins (a load spends GPU-seconds and memory other pipelines need; a
  short wait behind a replica that already holds the pipeline spends neither). With band pools a request only goes to replicas of its band's
  pool or the shared pool, so cold loads never stall the hot replicas (the talk: "route by
  popularity bands to separate hot and cold pools"). With ``host_contention`` c > 0 (replicas
  sharing a machine's processors: each busy neighbour makes a job (1 + c) times as long, the
  coefficient ``t2i profile`` measures), a replica's load and the request's compute are stretched
  by its busy neighbours on the same machine: sending a request to an idle replica beside a busy
  one buys less parallelism than its queue wait suggests, and the load it pays there slows the
  neighbour too. On dedicated GPUs (c = 0, the default) the cost is unchanged. With
  ``host_slots`` k > 0 (the machine's cores, or 1 for replicas sharing a GPU), an idle replica on
  a machine where k replicas already compute is priced as starting only when one of them drains
  (``ClusterSnapshot.slot_wait_s``): past k, more jobs at once add no throughput and stretch every
  job there (measured on the 2-core demo: 2.1x and 2.6-2.9x at 3 and 4 busy replicas), so the
  request waits behind the replica that frees soonest unless another is cheaper still.
- ``ray-multiplex``: Ray Serve 2.x's default router with model multiplexing, as read from
  ``ray/serve/_private/request_router/`` (pow_2_router.py, request_router.py): candidates are
  the replicas holding the model; if none, the replicas with the fewest models loaded; power of
  two choices among candidates picks the shorter queue, and a replica at ``max_ongoing_requests``
  (Ray's default 5) rejects, sending the request down the hierarchy (holders -> fewest models ->
  all). Simplification: Ray waits up to 1-2 s (its matching timeout, with backoff) before leaving
  the holders; here the hierarchy is walked at once, and when every probe rejects, the request
  goes to the shorter queue of the last pair (where it would have waited in the router anyway).
- ``random``: uniform, the floor.

A router is O(R) numpy per request; the simulator calls it for every request. For that caller,
``LeastExpectedLatency.route_indexed`` is the same policy on a ``LatencyIndex`` the caller keeps
current (per component: which replicas hold it on the GPU, and its load seconds on every replica):
a request that some idle replica holds entirely on its GPU is decided from those holder sets alone
(expected latency exactly 0 there, above 0 everywhere else), any other from the index's rows with
fewer numpy operations than the snapshot form; the choice, ties and random draws included, is the
snapshot form's (tests/unit/test_routing_index.py checks them on random states).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from policies.registry import Registry
from policies.snapshot import GPU, REMOTE, SHARED, ClusterSnapshot, ComponentTable, RouteRequest


@runtime_checkable
class Router(Protocol):
    name: ClassVar[str]

    def route(self, snap: ClusterSnapshot, req: RouteRequest, rng: np.random.Generator) -> int:
        """Index of the replica that should serve ``req`` (0 <= i < snap.replicas.n)."""
        ...


ROUTING: Registry[Router] = Registry("routing", discover="policies")


def expected_latency_s(snap: ClusterSnapshot, req: RouteRequest, host_contention: float = 0.0,
                       host_slots: int = 0) -> np.ndarray:
    """Queue wait plus load time of the missing components, per replica; compute is the same
    everywhere and left out, except for what busy neighbours on a shared machine add to it and to
    the loads (``host_contention`` x busy neighbours x (loads + ``req.compute_s``)), and, with
    ``host_slots``, the wait for a free slot on a machine already computing that many jobs."""
    return _latency(snap, req, snap.missing_load_s(req.components), host_contention, host_slots)


def _latency(snap: ClusterSnapshot, req: RouteRequest, load: np.ndarray, host_contention: float,
             host_slots: int = 0) -> np.ndarray:
    cost = snap.queue_wait_s() + load
    if host_contention > 0:
        cost += host_contention * snap.busy_neighbours() * (load + req.compute_s)
    if host_slots > 0:
        cost += snap.slot_wait_s(host_slots)
    return cost


def _pick_min(cost: np.ndarray, cand: np.ndarray | None, rng: np.random.Generator) -> int:
    """Lowest cost among candidates; exact ties broken at random (so idle replicas share load)."""
    c = cost if cand is None else cost[cand]
    i = int(c.argmin())
    eq = c == c[i]
    if np.count_nonzero(eq) > 1:  # most routes have one best replica: skip the index list then
        ties = np.flatnonzero(eq)
        i = int(ties[rng.integers(ties.size)])
    return i if cand is None else int(cand[i])


@ROUTING.register("least-expected-latency")
class LeastExpectedLatency:
    """Lowest queue wait + missing-load time, within the request's band pool if pools are on;
    with ``slack_s``, the fewest load-seconds among replicas within ``slack_s`` of the lowest."""

    name: ClassVar[str] = "least-expected-latency"

    def __init__(self, band_pools: bool = True, slack_s: float = 0.0, budget_s: float = 0.0,
                 host_contention: float = 0.0, host_slots: int = 0) -> None:
        if not slack_s >= 0:
            raise ValueError(f"slack_s must be >= 0 seconds, got {slack_s}")
        if not budget_s >= 0:
            raise ValueError(f"budget_s must be >= 0 seconds, got {budget_s}")
        if not 0 <= host_contention < 100:
            raise ValueError(f"host_contention must be in [0, 100) (extra duration per busy neighbour), "
                             f"got {host_contention}")
        if isinstance(host_slots, bool) or not isinstance(host_slots, int) or host_slots < 0:
            raise ValueError(f"host_slots must be a whole number >= 0 (0: off), got {host_slots!r}")
        self.band_pools = bool(band_pools)
        self.slack_s = float(slack_s)
        self.budget_s = float(budget_s)
        self.host_contention = float(host_contention)
        self.host_slots = host_slots

    def route(self, snap: ClusterSnapshot, req: RouteRequest, rng: np.random.Generator) -> int:
        if snap.replicas.n == 0:
            raise ValueError("cannot route: the snapshot has no replicas")
        load = snap.missing_load_s(req.components)
        cost = _latency(snap, req, load, self.host_contention, self.host_slots)
        cand = None
        if self.band_pools:
            pool = snap.replicas.pool
            ok = (pool == req.band) | (pool == SHARED)
            if not ok.all():
                cand = np.flatnonzero(ok)
                if cand.size == 0:
                    cand = None  # no replica in the band's pool: any will do
        if self.slack_s > 0 or self.budget_s > 0:
            c = cost if cand is None else cost[cand]
            near = np.flatnonzero(c <= max(c.min() + self.slack_s, self.budget_s))
            near = near if cand is None else cand[near]
            l = load[near]  # least to load first, then the lowest expected latency among those
            return _pick_min(cost, near[l == l.min()], rng)
        return _pick_min(cost, cand, rng)

    @property
    def indexable(self) -> bool:
        """Whether ``route_indexed`` applies: no band pools, slack, budget or host contention."""
        return (not self.band_pools and self.slack_s == 0 and self.budget_s == 0 and self.host_contention == 0
                and self.host_slots == 0)

    def route_indexed(self, index: "LatencyIndex", now: float, components: list[int],
                      queue_wait: Callable[[], np.ndarray], rng: np.random.Generator) -> int:
        """``route`` for a snapshot whose tiers ``index`` mirrors, with the same choice and the same
        draws from ``rng``. ``queue_wait()`` returns what that snapshot's ``queue_wait_s()`` would
        (seconds until each replica drains, >= 0), is called only when needed, and its array may be
        overwritten here. ``components``: the request's component ids (ints, base first).

        Exact because: loads from the GPU cost 0 and from every other tier more than 0
        (``LatencyIndex.exact_zero``) and waits are >= 0, so the replicas of cost 0 are those
        holding every component on the GPU with no wait; when there is one, the lowest cost is 0
        and they are the ties, in index order. Otherwise the costs are the snapshot form's: the
        wait plus the request's load rows summed in the same order.
        """
        if not self.indexable:
            raise ValueError("route_indexed needs band_pools=False, slack_s=0, budget_s=0 and host_contention=0")
        if index.n == 0:
            raise ValueError("cannot route: the snapshot has no replicas")
        wait = None
        if components and index.exact_zero:
            gpu = index.gpu
            held = gpu[components[0]]
            if held and len(components) > 1:
                held = held.intersection(*[gpu[c] for c in components[1:]])
            if held:
                idle = index.idle
                zero = [r for r in held if r in idle]
                if len(zero) < len(held):  # holders not known idle: their wait may still be 0
                    wait = queue_wait()
                    zero += [r for r in held if r not in idle and wait[r] == 0.0]
                if zero:
                    if len(zero) == 1:
                        return zero[0]
                    zero.sort()
                    return zero[int(rng.integers(len(zero)))]
        cost = queue_wait() if wait is None else wait
        if components:  # + missing loads, summed in the request's order as missing_load_s does
            lc = index.load_s
            load = lc[components[0]]
            if len(components) > 1:
                load = load + lc[components[1]]
                for c in components[2:]:
                    load += lc[c]
            cost += load
        # _pick_min's choice in fewer calls (no Python-level wrappers): the first of the minima is
        # argmin's; a tie draws as it does
        ties = (cost == _min(cost)).nonzero()[0]
        if ties.size == 1:
            return int(ties[0])
        if ties.size == 0:  # NaN costs (none in practice): exactly as the snapshot form
            return _pick_min(cost, None, rng)
        return int(ties[rng.integers(ties.size)])


_min = np.minimum.reduce


class LatencyIndex:
    """What ``LeastExpectedLatency.route_indexed`` reads, kept current by its owner in O(1) per change.

    - ``set_tier(r, c, t)`` on every tier change of component ``c`` on replica ``r`` (all start
      REMOTE): ``load_s[c, r]`` becomes ``load_cost_s[c, t]`` and ``gpu[c]`` the set of replicas
      holding ``c`` on their GPU;
    - ``idle``: replicas whose busy_until is certainly <= now at any later route (no work queued or
      running); the owner adds and removes them. Any other replica's wait is read from busy_until.
    """

    def __init__(self, n_replicas: int, components: ComponentTable) -> None:
        cost = np.asarray(components.load_cost_s, dtype=np.float64)
        self.n = int(n_replicas)
        self.cost_rows = cost.tolist()  # seconds to the GPU per component and tier, as lists
        # (C, R), one row per component, contiguous: a request's loads are k row additions
        self.load_s = np.repeat(cost[:, REMOTE][:, None], self.n, axis=1)
        self.rows = list(self.load_s)  # the same rows as views (an owner may write rows[c][r])
        self.gpu: list[set[int]] = [set() for _ in range(cost.shape[0])]
        self.idle: set[int] = set()
        # the 0-cost shortcut holds only if the GPU tier is free and every other tier is not
        self.exact_zero = bool((cost[:, GPU] == 0).all() and (cost[:, GPU + 1:] > 0).all())

    def set_tier(self, r: int, c: int, t: int) -> None:
        self.load_s[c, r] = self.cost_rows[c][t]
        if t == GPU:
            self.gpu[c].add(r)
        else:
            self.gpu[c].discard(r)

    def set_tiers(self, r: int, comps, tiers) -> None:
        """``set_tier`` for parallel sequences of components and tiers on replica ``r``."""
        rows, cost, gpu = self.rows, self.cost_rows, self.gpu
        for c, t in zip(comps, tiers):
            rows[c][r] = cost[c][t]
            if t == GPU:
                gpu[c].add(r)
            else:
                gpu[c].discard(r)


@ROUTING.register("ray-multiplex")
class RayMultiplex:
    """Ray Serve's default: replicas holding the model, power of two choices on queue length."""

    name: ClassVar[str] = "ray-multiplex"

    def __init__(self, max_ongoing_requests: int = 5, match: str = "base") -> None:
        if max_ongoing_requests < 1:
            raise ValueError(f"max_ongoing_requests must be >= 1, got {max_ongoing_requests}")
        if match not in ("pipeline", "base"):
            raise ValueError(f"match must be 'pipeline' or 'base', got {match!r}")
        self.max_ongoing_requests = int(max_ongoing_requests)
        # what counts as "the model": the base (as the live app multiplexes: ingress sets
        # multiplexed_model_id = base model, adapters load inside) or every component on GPU
        self.match = match

    def holders(self, snap: ClusterSnapshot, req: RouteRequest) -> np.ndarray:
        tier = snap.replicas.tier
        if self.match == "base":
            return np.flatnonzero(tier[:, req.components[0]] == GPU)
        return np.flatnonzero((tier[:, req.components] == GPU).all(axis=1))

    def route(self, snap: ClusterSnapshot, req: RouteRequest, rng: np.random.Generator) -> int:
        n = snap.replicas.n
        if n == 0:
            raise ValueError("cannot route: the snapshot has no replicas")
        q = snap.replicas.queue_len
        held = self.holders(snap, req)
        if held.size:
            pick = self._pow2(held, n, q, rng)
            if q[pick] < self.max_ongoing_requests:
                return pick
        models = snap.replicas.n_models  # Ray's next rung: the replicas with the fewest models
        pick = self._pow2(np.flatnonzero(models == models.min()), n, q, rng)
        if q[pick] < self.max_ongoing_requests:
            return pick
        return self._pow2(None, n, q, rng)  # then every replica

    @staticmethod
    def _pow2(cand: np.ndarray | None, n: int, q: np.ndarray, rng: np.random.Generator) -> int:
        """Two distinct random candidates, the shorter queue wins (first drawn on a tie)."""
        m = n if cand is None else cand.size
        if m == 1:
            return 0 if cand is None else int(cand[0])
        i = int(rng.integers(m))
        j = int(rng.integers(m - 1))
        j += j >= i
        a, b = (i, j) if cand is None else (int(cand[i]), int(cand[j]))
        return b if q[b] < q[a] else a


@ROUTING.register("random")
class RandomRouter:
    """Uniformly random replica: the floor every router must beat."""

    name: ClassVar[str] = "random"

    def route(self, snap: ClusterSnapshot, req: RouteRequest, rng: np.random.Generator) -> int:
        if snap.replicas.n == 0:
            raise ValueError("cannot route: the snapshot has no replicas")
        return int(rng.integers(snap.replicas.n))
