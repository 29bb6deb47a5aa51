"""The live cache coordinator: a thin adapter from replica reports to ``policies.coordination``.

``CacheCoordinator`` is a plain class; ``app/builder.py`` runs it as the BaseModel deployment's
deployment-scoped actor ``"coordinator"`` (Ray Serve's controller health-checks it and recreates
it after a crash). It is pull-based, because a Serve handle cannot address one replica: every
``control.report_period_s`` each BaseModel replica calls ``report(replica_id, report)`` and
applies the actions it gets back (S3 in the issue's plan):

    report  = {"t", "tiers": {id: tier}, "queue_len", "loading": [id], "gpu_free_bytes",
               "host_free_bytes", "gpu_budget_bytes", "host_budget_bytes",
               "load_cost_s": {id: [gpu, host, disk, remote]}, "served": [{"base", "controlnets",
               "loras", "t"}], "loads": [{"id", "from", "seconds", "prefetch"}],
               "evicted": [{"id", "to"}], "prefetch_hits": [id], "sizes": {id: bytes} (optional)}
    actions = {"pins": [id], "prefetch": [id], "place": [id], "pool": int, "cascade_replicas": int}

Each report becomes the same core calls the simulator's adapter makes for the same events:
served requests -> ``routed`` (pipeline = base + ControlNets + LoRAs, interned in order of first
appearance), the report's prefetch load seconds -> ``prefetch_loaded``, evictions and the new
tiers (diffed against what the core knew) -> ``tiers_changed``, then ``tick`` once a re-plan
period has passed (on a grid of ``replan_period_s``), then ``idle`` when the replica has nothing
queued and nothing loading. A report does not order its events, so the replica's
``prefetch_hits`` decide: a served request whose open prefetch the replica used counts (as a hit)
before the report's evictions, every other one after them (a hit only if no eviction closed the
prefetch first). A prefetch is thus used only if its copy was still resident. Not covered: a
prefetch the replica never began (a request came first) stays open and counts a later request.

State is soft: nothing a request needs lives here, and a recreated coordinator rebuilds its
view from the next reports (popularity and bandit statistics start again). Replicas that stop
reporting for three report periods are forgotten. Model sizes come from the config's
``size_bytes``, a report's ``sizes``, or else the mean of the known sizes of that kind;
seconds to the GPU by tier from the reports' ``load_cost_s`` (measured on the replica).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from deployments.config import ServeConfig
from deployments.live_cascade import LiveCascade
from policies.coordination import COMPS, Coordination
from policies.snapshot import (BAND_NAMES, BASE, CONTROLNET, GPU, HOT, LORA, REMOTE, SHARED, TIER_NAMES, WARM,
                               ComponentTable, PipelineIndex, PipelineKey)

_KINDS = {"base": BASE, "controlnet": CONTROLNET, "lora": LORA}
FORGET_AFTER_PERIODS = 3
DEFAULT_SIZE_BYTES = 1 << 20  # an unknown model's size before anything of its kind is known


class CacheCoordinator:
    """One application's coordinator; see the module docstring for the protocol."""

    def __init__(self, raw: dict, clock: Callable[[], float] = time.time, seed: int = 0,
                 core_args: dict | None = None) -> None:
        self.config = ServeConfig.model_validate(raw)
        # core_args: further policies.coordination.Coordination arguments (tests, tuning); the
        # prefetch interval and reward window come from control.prefetch_interval_s and
        # prefetch_reward_window_s (600 s and 30 min by default, the simulator's values)
        self._dirty = False  # components interned since the core's table was built
        ctl = self.config.control
        self.core = Coordination(**{**ctl.coordinator_args(), **(core_args or {})})
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        self.replan_period_s, self.report_period_s = ctl.replan_period_s, ctl.report_period_s
        # components: dense ids in config order, then ids first seen in reports
        self.comp_id: dict[str, int] = {}
        self.comp_name: list[str] = []
        self._kind: list[int] = []
        self._size: list[float] = []  # NaN: unknown
        self._cost: list[list[float]] = []
        for m in self.config.models:
            if m.kind in _KINDS:
                self._component(m.id, _KINDS[m.kind], m.size_bytes)
        # pipelines: dense ids in order of first appearance, components base first
        self.pipes = PipelineIndex()
        # replicas: dense index per replica id (a forgotten replica's index is reused)
        self.rep_index: dict[str, int] = {}
        self.rep_name: list[str | None] = []
        self.last_seen: list[float] = []
        self.last_report: list[dict] = []
        self.st = self.core.new_state(0, self._table(), self.pipes)
        self.next_tick = -math.inf
        self.plans = 0
        self.operator_pins: dict[str, list[str] | None] = {}  # model -> replica ids (None: next reporter)
        self.replica_prefetch_hits = 0
        self.prefetch_load_s = 0.0  # seconds replicas reported loading prefetches (on no request's path)
        self.placement_load_s = 0.0  # and loading pinned models into free memory while idle
        cascade = self.config.cascade
        # With BaseModel autoscaling the planner plans over the deployment's max_replicas and its
        # stages' replicas become the autoscaler's floor (the replicas pass it on as a metric);
        # without, it plans over the replicas reporting now and spreads any spare among the stages.
        self.autoscaled = self.config.deployments.base_model.autoscaling is not None
        planner_args = {**cascade.planner_args, **({"spread_spare": False} if self.autoscaled else {})}
        self.cascade = (LiveCascade(self.config, float(clock()), planner_args)
                        if self.config.cascade_planned() else None)

    # -- interning -----------------------------------------------------------------------------
    def _component(self, model_id: str, kind: int = BASE, size: float | None = None) -> int:
        c = self.comp_id.get(model_id)
        if c is None:
            c = self.comp_id[model_id] = len(self.comp_name)
            self.comp_name.append(model_id)
            self._kind.append(kind)
            self._size.append(math.nan if size is None else float(size))
            self._cost.append([0.0, 0.0, 0.0, 0.0])
            self._dirty = True
        return c

    def _table(self) -> ComponentTable:
        """Kinds, sizes (unknown: the mean known size of its kind) and seconds to the GPU by tier."""
        kind = np.array(self._kind, np.int8)
        size = np.array(self._size, np.float64)
        for k in (BASE, CONTROLNET, LORA):
            known = size[(kind == k) & ~np.isnan(size)]
            size[(kind == k) & np.isnan(size)] = known.mean() if known.size else DEFAULT_SIZE_BYTES
        cost = np.array(self._cost, np.float64).reshape(-1, 4)
        self._dirty = False
        return ComponentTable(kind, size.astype(np.int64), cost)

    def _pipeline(self, served: dict) -> int:
        return self.pipes.intern(PipelineKey.of(
            self._component(served["base"], BASE),
            (self._component(x, CONTROLNET) for x in served.get("controlnets") or ()),
            (self._component(x, LORA) for x in served.get("loras") or ())))

    def _replica(self, replica_id: str, now: float) -> int:
        r = self.rep_index.get(replica_id)
        if r is None:
            free = [j for j, name in enumerate(self.rep_name) if name is None]
            if free:
                r = free[0]
            else:
                r = len(self.rep_name)
                self.rep_name.append(None)
                self.last_seen.append(now)
                self.last_report.append({})
                self.core.grow(self.st, n_replicas=r + 1)
            self.rep_index[replica_id] = r
            self.rep_name[r] = replica_id
        self.last_seen[r] = now
        return r

    def _forget_stale(self, now: float) -> None:
        limit = FORGET_AFTER_PERIODS * self.report_period_s
        for r, name in enumerate(self.rep_name):
            if name is not None and now - self.last_seen[r] > limit:
                del self.rep_index[name]
                self.rep_name[r] = None
                self.last_report[r] = {}
                self.core.forget_replica(self.st, r)

    # -- the replica protocol --------------------------------------------------------------------
    def report(self, replica_id: str, report: dict) -> dict:
        """Take one replica's report; return its actions (pins, prefetch, pool)."""
        now = float(self.clock())
        self._forget_stale(now)
        r = self._replica(replica_id, now)
        self.last_report[r] = report
        self._learn(report)
        st, core = self.st, self.core
        st.gpu_bytes[r] = float(report.get("gpu_budget_bytes") or 0)
        # A report does not order its events. A served request whose open prefetch the replica
        # says it used (prefetch_hits: a prefetched model's first use while still resident)
        # counts before this report's evictions; every other one after them (a hit only if its
        # prefetch is still open then, i.e. no eviction took the copy).
        used_models = {self._component(m) for m in report.get("prefetch_hits") or ()}
        later = []
        for s in report.get("served") or ():
            p, t = self._pipeline(s), float(s.get("t", now))
            rec = st.open[r].get(p)
            if rec is not None and used_models & rec[COMPS]:
                core.routed(st, r, p, t, used=True)
            else:
                later.append((p, t))
        for x in report.get("loads") or ():
            if x.get("placement"):  # a pin placed while idle: not the bandit's, not its cost
                self.placement_load_s += float(x.get("seconds", 0.0))
            elif x.get("prefetch"):  # the core keeps only loads that were part of its latest prefetch
                seconds = float(x.get("seconds", 0.0))
                self.prefetch_load_s += seconds
                core.prefetch_loaded(st, r, seconds, self._component(x["id"]))
        self.replica_prefetch_hits += len(used_models)
        if self._dirty:  # ids first seen in this report: a larger table before any tier lands
            core.grow(st, components=self._table())
        for e in report.get("evicted") or ():  # left the GPU, even if it is back by now
            c = self.comp_id[e["id"]]
            if st.tier[r, c] == GPU and int(e.get("to", REMOTE)) != GPU:
                core.tiers_changed(st, r, [c], [int(e.get("to", REMOTE))], now)
        tiers = report.get("tiers") or {}
        new = np.full(st.tier.shape[1], REMOTE, np.int8)
        for model_id, t in tiers.items():
            new[self.comp_id[model_id]] = int(t)
        changed = np.flatnonzero(new != st.tier[r]).tolist()
        if changed:
            core.tiers_changed(st, r, changed, new[changed].tolist(), now)
        for p, t in later:
            core.routed(st, r, p, t)
        if now >= self.next_tick:
            if core.tick(st, now) is not None:
                self.plans += 1
            self.next_tick = now + self.replan_period_s
        load = None
        if int(report.get("queue_len", 0)) == 0 and not report.get("loading"):
            load = core.idle(st, r, now, float(report.get("gpu_free_bytes") or 0), self.rng)
        names = [self.comp_name[c] for c in load.components] if load is not None else []
        # a bandit prefetch, or the placement's pins the replica still lacks (core.idle says which)
        return {"pins": self._pins(r, replica_id),
                "prefetch": names if load is not None and load.prefetch else [],
                "place": names if load is not None and not load.prefetch else [],
                "pool": int(st.pool[r]), "cascade_replicas": self._cascade_target()}

    def _learn(self, report: dict) -> None:
        """Intern ids first seen in ``report``; take its sizes and measured load seconds."""
        for model_id in report.get("tiers") or {}:
            self._component(model_id, BASE)
        for e in report.get("evicted") or ():
            self._component(e["id"], BASE)
        for model_id, size in (report.get("sizes") or {}).items():
            c = self._component(model_id, BASE)
            if size and self._size[c] != float(size):
                self._size[c] = float(size)
                self._dirty = True
        table = self.st.components
        for model_id, cost in (report.get("load_cost_s") or {}).items():
            c = self._component(model_id, BASE)
            row = [float(x) for x in cost]
            if len(row) == 4 and row != self._cost[c]:
                self._cost[c] = row
                if c < table.n:
                    table.load_cost_s[c] = row  # in place: the table's arrays are ours

    def _pins(self, r: int, replica_id: str) -> list[str]:
        names = {self.comp_name[c] for c in self.st.pins[r]} | self._stage_pins(replica_id)
        for model_id, replicas in self.operator_pins.items():
            if replicas is None:  # an operator pin waiting for a replica: this one takes it
                replicas = self.operator_pins[model_id] = [replica_id]
            if replica_id in replicas:
                names.add(model_id)
        return sorted(names)

    # -- the cascade -----------------------------------------------------------------------------
    def cascade_report(self, report: dict) -> dict:
        """An ingress replica's cascade report (deployments/live_cascade.py); the plan in force.
        The planner's GPUs are the BaseModel replicas reporting now (max_replicas when autoscaled),
        at most ``cascade.planner_replicas``."""
        if self.cascade is None:
            raise RuntimeError("no cascade planner: cascade.light/heavy/discriminator unset or "
                               "cascade.planner is fixed")
        now = float(self.clock())
        self._forget_stale(now)
        gpus = self.config.deployments.base_model.autoscaling.max_replicas if self.autoscaled else len(self.rep_index)
        cap = self.config.cascade.planner_replicas
        return self.cascade.report(now, report, gpus if cap is None else min(gpus, cap))

    def _cascade_target(self) -> int:
        """The cascade stages' replicas, as the autoscaler's floor (0: no plan, or no autoscaling)."""
        if self.cascade is None or not self.autoscaled:
            return 0
        plan = self.cascade.plan()
        return int(plan["light_replicas"] + plan["heavy_replicas"]) if plan["source"] == "planner" else 0

    def cascade_view(self) -> dict:
        """GET /v1/cascade: the plan in force, the demand it was made for, and each stage's replicas."""
        if self.cascade is None:
            raise RuntimeError("no cascade planner: cascade.light/heavy/discriminator unset or "
                               "cascade.planner is fixed")
        doc = self.cascade.plan()
        cfg = self.config.cascade
        stages = self._stage_assignment()
        doc["stages"] = {model: sorted(r for r, m in stages.items() if m == model) for model in (cfg.light, cfg.heavy)}
        return doc

    def _stage_assignment(self) -> dict[str, str]:
        """Replica id -> the cascade stage's model it is pinned to under the plan: the light
        model on the first ``light_replicas`` replicas (in the coordinator's replica order, which
        is stable while they live), the heavy model on the next ``heavy_replicas``."""
        if self.cascade is None:
            return {}
        plan = self.cascade.plan()
        if plan["source"] != "planner":
            return {}
        live = [name for name in self.rep_name if name is not None]
        n_light, n_heavy = int(plan["light_replicas"]), int(plan["heavy_replicas"])
        cfg = self.config.cascade
        out = {rid: cfg.light for rid in live[:n_light]}
        out.update({rid: cfg.heavy for rid in live[n_light:n_light + n_heavy]})
        return out

    def _stage_pins(self, replica_id: str) -> set[str]:
        model = self._stage_assignment().get(replica_id)
        return set() if model is None else {model}

    # -- operator --------------------------------------------------------------------------------
    def pin(self, model_ids: list[str], replicas: list[str] | None = None) -> dict:
        """Keep ``model_ids`` resident on ``replicas`` (default: one replica, the one already
        holding it on its GPU, else the one with the most free GPU memory) until unpinned."""
        for model_id in model_ids:
            if model_id not in self.comp_id:
                raise ValueError(f"unknown model id {model_id!r}")
        for model_id in model_ids:
            chosen = list(replicas) if replicas is not None else self._pick_replica(model_id)
            old = self.operator_pins.get(model_id) or []
            self.operator_pins[model_id] = None if chosen is None else sorted(set(old) | set(chosen))
        return {"pinned": {m: self.operator_pins[m] for m in model_ids}}

    def unpin(self, model_ids: list[str]) -> dict:
        """Drop an operator's pins of ``model_ids`` on every replica."""
        removed = [m for m in model_ids if m in self.operator_pins]
        for m in removed:
            del self.operator_pins[m]
        return {"unpinned": removed}

    def _pick_replica(self, model_id: str) -> list[str] | None:
        live = [(r, name) for r, name in enumerate(self.rep_name) if name is not None]
        if not live:
            return None
        c = self.comp_id[model_id]
        holding = [name for r, name in live if self.st.tier[r, c] == GPU]
        if holding:
            return [holding[0]]
        free = max(live, key=lambda x: (int(self.last_report[x[0]].get("gpu_free_bytes") or 0), -x[0]))
        return [free[1]]

    # -- view ------------------------------------------------------------------------------------
    def view(self) -> dict:
        """What ``GET /v1/cache`` shows: per replica what it holds by tier, its pins, pool and report
        age; hot and warm pipelines; operator pins; prefetches used and wasted, and the hit rate."""
        now = float(self.clock())
        self._forget_stale(now)  # also when no replica reports any more
        st, names = self.st, self.comp_name
        replicas = []
        for r, rid in enumerate(self.rep_name):
            if rid is None:
                continue
            rep = self.last_report[r]
            row = st.tier[r]
            held = {TIER_NAMES[t]: [names[c] for c in np.flatnonzero(row == t).tolist()] for t in range(REMOTE)}
            pool = int(st.pool[r])
            replicas.append({"id": rid, "index": r, "report_age_s": round(now - self.last_seen[r], 3),
                             "tiers": held, "pins": self._pins(r, rid),
                             "pool": "shared" if pool == SHARED else BAND_NAMES[pool],
                             "queue_len": int(rep.get("queue_len", 0)), "loading": list(rep.get("loading") or ()),
                             "gpu_free_bytes": int(rep.get("gpu_free_bytes") or 0),
                             "host_free_bytes": int(rep.get("host_free_bytes") or 0)})
        bands = self.core.pop.bands(st.pop, now) if self.pipes else np.zeros(0, np.int8)
        demand = self.core.pop.scores(st.pop, now) if self.pipes else np.zeros(0)
        by_band = {}
        for b in (HOT, WARM):
            ids = np.flatnonzero(bands == b)
            ids = ids[np.argsort(-demand[ids], kind="stable")]
            by_band[BAND_NAMES[b]] = [{"pipeline": self._pipe_name(p), "demand": round(float(demand[p]), 3)}
                                      for p in ids.tolist()]
        return {"replicas": replicas, "bands": by_band, "operator_pins": dict(self.operator_pins),
                "prefetch": {"used": st.used, "wasted": st.wasted, "hit_rate": self.core.hit_rate(st),
                             "open": sum(len(o) for o in st.open),
                             "replica_reported_hits": self.replica_prefetch_hits,
                             "load_seconds": round(self.prefetch_load_s, 6)},
                "placement": {"load_seconds": round(self.placement_load_s, 6)},
                "plans": self.plans,
                "last_plan_age_s": None if not math.isfinite(st.last_plan) else round(now - st.last_plan, 3)}

    def _pipe_name(self, p: int) -> str:
        base, cns, loras = self.pipes.keys[p]
        return "+".join(self.comp_name[c] for c in (base, *cns, *loras))
