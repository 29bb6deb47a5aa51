"""A BaseModel replica's control side: its model cache, queue and timings, the stats it publishes
to the router (S1) and autoscaler (S2), and its report/actions loop with the coordinator (S3).

The loop runs only under `control.policies: coordinator`. Every `control.report_period_s` it sends
a report to the deployment-scoped actor "coordinator" and applies the answer (pins, prefetches,
pool). The coordinator is advisory: when it cannot be reached (not created yet, dead, being
recreated, slow) the replica logs once, resolves the handle again next period and keeps serving
on its own cache decisions; no request ever waits on it. After STALE_AFTER_FAILURES failed
reports in a row it also drops the coordinator's pins and prefetches. Events not delivered are
sent with the next report that gets through (bounded).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager

from deployments.adapter_tier import AdapterTier
from deployments.config import ServeConfig
from deployments.load_costs import DEFAULT_BANDWIDTH
from deployments.model_cache import ModelCache
from deployments.pipeline_engine import EngineModels, LoadedPipeline, PipelineEngine, default_gpu_budget
from deployments.spec import GenerationResult, GenerationSpec
from policies import load_ahead
from policies.drain import drain_of
from policies.eviction import EVICTION
from policies.snapshot import DISK, GPU, HOST, SHARED

logger = logging.getLogger(__name__)

REPORT_TIMEOUT_S = 2.0  # a coordinator slower than this counts as away for the period
COMPUTE_PRIOR_S = 1.0  # seconds per request assumed before the replica has served one
EWMA_WEIGHT = 0.2  # of the newest request in the per-request means
# Seconds assumed for one adapter before this replica has measured any: a fetch from the LoRA
# store (a Ray call and a transfer; t2i profile's lora_store median on the tiny models, rounded
# up) and a swap into a pipeline's slot (milliseconds; 29 ms for SD 1.5 rank 64 on an H200,
# ../shared/data/gpu)
ADAPTER_FETCH_PRIOR_S = 0.05
ADAPTER_SWAP_PRIOR_S = 0.01
MAX_PENDING = 10_000  # undelivered report events kept per list while the coordinator is away
# Failed reports in a row after which the coordinator's pins and prefetches are dropped: its
# pins can block a request's load (a pinned entry is never evicted), and a coordinator that is
# gone cannot lift them; a blip shorter than this keeps them.
STALE_AFTER_FAILURES = 3
_EVENTS = ("served", "loads", "evicted", "prefetch_hits")


def deployment_coordinator():
    """The deployment-scoped coordinator actor of this replica's deployment (blocking lookup)."""
    from ray import serve

    return serve.get_deployment_actor("coordinator")


class ReplicaControl:
    def __init__(self, config: ServeConfig, engine: PipelineEngine, multiplexed: Callable[[], dict],
                 replica_id: Callable[[], str | None] = lambda: None,
                 resolve_coordinator: Callable[[], object] = deployment_coordinator):
        self.config = config
        self.engine = engine
        self.coordinated = config.control.policies == "coordinator"
        self.source = EngineModels(engine)
        self.gpu_budget = config.control.gpu_budget_bytes or default_gpu_budget(engine.device)
        self.cache: ModelCache | None = None
        if self.coordinated:
            self.cache = ModelCache(self.source, self.gpu_budget, config.control.host_budget_bytes,
                                    EVICTION.create(config.control.eviction, **config.control.eviction_args))
        # the adapters' host tier (coordinator set): fetched LoRAs stay on the replica
        self.adapters = (AdapterTier(config.control.adapter_host_bytes,
                                     EVICTION.create(config.control.eviction, **config.control.eviction_args),
                                     time.monotonic)
                         if self.coordinated else None)
        self.adapter_fetch_s = ADAPTER_FETCH_PRIOR_S  # EWMA per adapter fetched from the store
        self.adapter_swap_s = ADAPTER_SWAP_PRIOR_S  # EWMA per adapter swapped into a slot
        self._multiplexed = multiplexed  # ray-default: {model id: LoadedPipeline}
        colocated = config.controlnet_mode == "colocated"
        self.cacheable = [*config.ids("base"), *(config.ids("controlnet") if colocated else [])]
        self.loras = config.ids("lora")
        self._replica_id = replica_id
        self._resolve = resolve_coordinator
        self.queue_len = 0
        # (spec, its cached models) of each request in the replica, in order of arrival
        self.in_flight: list[tuple[GenerationSpec, list[str]]] = []
        self.requests_total = 0
        self.compute_s: float | None = None  # EWMA of inference seconds per request
        self.service_s: float | None = None  # EWMA of inference + load seconds per request
        # EWMA of inference seconds per step and image, by (base model, ControlNets in the
        # request): a request's expected compute, which the drain time sums (policies.drain)
        self.per_step: dict[tuple[str, int], float] = {}
        self._computing: dict[int, tuple[float, float]] = {}  # id(spec) -> (start, expected s)
        self.clock = time.monotonic  # of the drain time's elapsed seconds
        self.pool = SHARED
        self.prefetch_wanted: list[str] = []
        self.placements: frozenset[str] = frozenset()  # of prefetch_wanted, those for the placement
        self.cascade_replicas = 0  # the cascade plan's replica target (0: none), for the autoscaler
        self._pending: dict[str, list] = {name: [] for name in _EVENTS}
        self._coordinator = None
        self._coordinator_down = False
        self._failures = 0  # failed reports in a row
        self.last_report_t: float | None = None
        self._task: asyncio.Task | None = None
        self._prefetch_task: asyncio.Task | None = None
        self._metrics = None

    # -- requests ---------------------------------------------------------------------------
    @contextmanager
    def request(self, spec: GenerationSpec):
        """Count a request in for its duration; yields a callback taking its result's timings."""
        self.queue_len += 1
        held = (spec, self.models_of(spec))
        self.in_flight.append(held)
        self.requests_total += 1
        self._pending["served"].append({"base": spec.base_model,
                                        "controlnets": [c for c, _ in spec.controlnets],
                                        "loras": [a for a, _ in spec.loras], "t": time.time()})
        del self._pending["served"][:-MAX_PENDING]
        try:
            yield lambda result: self._record(spec, result)
        finally:
            self.queue_len -= 1
            self.in_flight.remove(held)
            self._computing.pop(id(spec), None)

    def computing(self, spec: GenerationSpec) -> None:
        """`spec` holds the device now (its models are loaded): from here its expected compute
        counts down in the drain time instead of counting whole."""
        self._computing[id(spec)] = (self.clock(), self.expected_compute_s(spec))

    def expected_compute_s(self, spec: GenerationSpec) -> float:
        """Inference seconds `spec` is expected to take here: this replica's running mean per
        step for its base model and ControlNet count, else its mean per request, else the prior."""
        per = self.per_step.get((spec.base_model, len(spec.controlnets)))
        return per * spec.compute_units if per is not None else self._mean_compute_s()

    def _mean_compute_s(self) -> float:
        return self.compute_s if self.compute_s is not None else COMPUTE_PRIOR_S

    def models_of(self, spec: GenerationSpec) -> list[str]:
        """The models of `spec` the replica cache holds: its base pipeline, and its ControlNets
        when they are colocated."""
        colocated = self.config.controlnet_mode == "colocated"
        return list(dict.fromkeys([spec.base_model, *([cn for cn, _ in spec.controlnets] if colocated else [])]))

    def needed_by_others(self, spec: GenerationSpec) -> frozenset:
        """Models the replica's other requests (queued or running) need (policies.load_ahead.keep)."""
        return load_ahead.keep(models for other, models in self.in_flight if other is not spec)

    def earlier_ready(self, spec: GenerationSpec) -> bool:
        """Whether `spec` may load ahead: every request that came before it has its models on the
        device or loading (policies.load_ahead.may_load_ahead)."""
        loading = set(self.cache.loading())
        earlier = []
        for other, models in self.in_flight:
            if other is spec:
                break
            earlier.append(models)
        return load_ahead.may_load_ahead(earlier, lambda m: m in loading or self.cache.resident(m))

    def _record(self, spec: GenerationSpec, result: GenerationResult) -> None:
        compute = float(result.timings.get("inference_s", 0.0))
        total = compute + float(result.timings.get("load_s", 0.0))
        self.compute_s = _ewma(self.compute_s, compute)
        self.service_s = _ewma(self.service_s, total)
        key = (spec.base_model, len(spec.controlnets))
        self.per_step[key] = _ewma(self.per_step.get(key), compute / spec.compute_units)

    def record_adapter_fetch(self, seconds_per_adapter: float) -> None:
        self.adapter_fetch_s = _ewma(self.adapter_fetch_s, seconds_per_adapter)

    def record_adapter_swap(self, result: GenerationResult) -> None:
        """The engine's slot-swap time per adapter swapped: what a LoRA held in this replica's
        host tier costs."""
        if result.adapters_swapped:
            per = float(result.timings.get("swap_s", 0.0)) / result.adapters_swapped
            self.adapter_swap_s = _ewma(self.adapter_swap_s, per)

    def idle(self) -> bool:
        return self.queue_len == 0 and not (self.cache and self.cache.loading())

    # -- what it holds ----------------------------------------------------------------------
    def _pipelines(self) -> dict:
        return self.cache.objects() if self.cache else self._multiplexed()

    def tiers(self) -> dict[str, int]:
        """Every model held at its fastest tier; LoRAs in a resident pipeline's slots count as
        GPU, those in the adapters' host tier as HOST."""
        if self.cache:
            tiers = {a: HOST for a in self.adapters.held()}
            tiers.update(self.cache.tiers())
        else:
            tiers = {m: GPU for m in self._multiplexed()}
            tiers.update({cn: GPU for cn in list(self.engine._controlnets)})
        for pipeline in list(self._pipelines().values()):
            if isinstance(pipeline, LoadedPipeline) and pipeline.slots is not None:
                tiers.update({a: GPU for a in list(pipeline.slots.holding) if a is not None})
        return tiers

    def load_cost_s(self) -> dict[str, list[float]]:
        if self.cache:
            costs = {m: self.cache.load_cost_s(m) for m in self.cacheable}
            # a LoRA: a swap from this replica's host tier, else a fetch from the store and a swap
            swap, fetch = self.adapter_swap_s, self.adapter_fetch_s + self.adapter_swap_s
            costs.update({a: [0.0, swap, fetch, fetch] for a in self.loras})
            return costs
        measured = {m: p.load_seconds for m, p in self._multiplexed().items()}
        out = {}
        for m in self.cacheable:
            cold = measured.get(m, self.source.estimate_bytes(m) / DEFAULT_BANDWIDTH[DISK])
            out[m] = [0.0, cold, cold, cold]  # serve.multiplexed has no host tier
        return out

    def _bytes(self) -> tuple[int, int, int]:
        """(device bytes used, device bytes free, host bytes free)."""
        if self.cache:
            used = self.cache.gpu_used()
            return used, self.gpu_budget - used, self.cache.host_budget - self.cache.host_used()
        used = sum(self.source.size_of(p) for p in self._multiplexed().values() if p.pipe is not None)
        return used, max(0, self.gpu_budget - used), 0

    def busy_s(self) -> float:
        """Seconds until the current work drains (policies.drain, as the simulator's replicas
        report it): the running request's expected compute less its elapsed time, each queued
        request's expected compute, plus the expected remainder of the loads in progress. With
        `control.per_model_compute` off: the mean compute per request x the queue length, plus
        the loads."""
        loading = self.cache.loading_remaining_s() if self.cache else 0.0
        if not self.config.control.per_model_compute:  # the replica's mean per request x queue
            return self._mean_compute_s() * self.queue_len + loading
        running, queued = [], []
        for spec, _ in self.in_flight:
            started = self._computing.get(id(spec))
            if started is not None:
                running.append(started)
            else:
                queued.append(self.expected_compute_s(spec))
        return drain_of(self.clock(), running, queued) + loading

    def compute_table(self) -> dict[str, dict[str, float]]:
        """The running means per step, {base model: {ControlNet count: seconds}}, for routers to
        price a request's compute before it reaches a replica (empty with
        `control.per_model_compute` off: routers fall back to the replica's mean)."""
        table: dict[str, dict[str, float]] = {}
        if not self.config.control.per_model_compute:
            return table
        for (base, n_cn), per in self.per_step.items():
            table.setdefault(base, {})[str(n_cn)] = per
        return table

    def routing_stats(self) -> dict:
        _, gpu_free, host_free = self._bytes()
        return {"t": time.time(), "queue_len": self.queue_len, "busy_s": self.busy_s(),
                "tiers": self.tiers(), "loading": self.cache.loading() if self.cache else [],
                "gpu_free_bytes": gpu_free, "host_free_bytes": host_free,
                "load_cost_s": self.load_cost_s(), "pool": self.pool,
                "service_s": self.service_s if self.service_s is not None else 0.0,
                "compute_s": self.compute_s if self.compute_s is not None else 0.0,
                "compute_per_step_s": self.compute_table()}

    def autoscaling_stats(self) -> dict[str, float]:
        used, _, _ = self._bytes()
        return {"queue_len": float(self.queue_len),
                "loads_in_progress": float(len(self.cache.loading()) if self.cache else 0),
                "busy_s": float(self.busy_s()), "requests_total": float(self.requests_total),
                "service_s": float(self.service_s or 0.0), "resident_bytes": float(used),
                "cache_value": float(self.cache.value_s() if self.cache else 0.0),
                "cascade_replicas": float(self.cascade_replicas)}

    def cache_state(self) -> dict:
        held = (self.cache.state() if self.cache else
                {"gpu": {m: {"load_seconds": round(p.load_seconds, 4)}
                         for m, p in self._multiplexed().items()},
                 "policy": "serve.multiplexed"})
        return {"replica": self._replica_id(), "policies": self.config.control.policies,
                "queue_len": self.queue_len, "requests_total": self.requests_total, "pool": self.pool,
                "prefetch_wanted": list(self.prefetch_wanted), "tiers": self.tiers(), **held,
                "coordinator": {"reachable": self.coordinated and not self._coordinator_down
                                and self.last_report_t is not None, "last_report_t": self.last_report_t}}

    # -- coordinator loop -------------------------------------------------------------------
    def start(self) -> None:
        """Start the report loop once, if coordinated and called on a running event loop."""
        if not self.coordinated or self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.control.report_period_s)
            try:
                await self.report_once()
                self.maybe_prefetch()
                self._export_metrics()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one bad period
                logger.exception("replica control period failed")

    def report(self) -> dict:
        """The S3 report: state now, plus events not yet delivered."""
        for name, events in self.cache.drain_events().items():
            self._pending[name].extend(events)
            del self._pending[name][:-MAX_PENDING]
        stats = self.routing_stats()
        return {"t": stats["t"], "tiers": stats["tiers"], "queue_len": stats["queue_len"],
                "loading": stats["loading"], "gpu_free_bytes": stats["gpu_free_bytes"],
                "host_free_bytes": stats["host_free_bytes"], "gpu_budget_bytes": self.gpu_budget,
                "host_budget_bytes": self.cache.host_budget, "load_cost_s": stats["load_cost_s"],
                # device bytes per model: measured where loaded here, else the estimate
                "sizes": {m: self.cache.size_estimate(m) for m in self.cacheable},
                **{name: list(events) for name, events in self._pending.items()}}

    async def report_once(self) -> bool:
        """Send one report and apply the actions; False (logged once per outage) when the
        coordinator cannot be reached within REPORT_TIMEOUT_S."""
        report = self.report()
        try:
            if self._coordinator is None:
                self._coordinator = await asyncio.wait_for(asyncio.to_thread(self._resolve), REPORT_TIMEOUT_S)
            actions = await asyncio.wait_for(
                _awaitable(self._coordinator.report.remote(self._replica_id() or "local", report)),
                REPORT_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RayActorError, ValueError (no such actor yet), timeout, ...
            self._coordinator = None  # a recreated coordinator is a new actor: look it up again
            self._failures += 1
            if self._failures == STALE_AFTER_FAILURES and (self.cache.pins or self.prefetch_wanted):
                logger.warning("coordinator away for %d reports: dropping its pins and prefetches",
                               self._failures)
                self.cache.set_pins(())
                self.prefetch_wanted = []
            if not self._coordinator_down:
                logger.warning("coordinator unreachable (%s: %s); serving on local cache decisions "
                               "until it answers", type(exc).__name__, exc)
                self._coordinator_down = True
            return False
        for name in _EVENTS:  # delivered; what arrived during the call stays for the next
            del self._pending[name][:len(report[name])]
        if self._coordinator_down:
            logger.info("coordinator reachable again")
            self._coordinator_down = False
        self._failures = 0
        self.last_report_t = report["t"]
        self.apply(actions)
        return True

    def apply(self, actions: dict) -> None:
        """Pins (the full set) for models this cache holds, prefetches, pool, and the cascade
        plan's replica target (recorded for the autoscaler)."""
        if not isinstance(actions, dict):
            logger.warning("ignoring coordinator actions of type %s", type(actions).__name__)
            return
        known = set(self.cacheable)
        pins = [m for m in actions.get("pins") or () if m in known]
        self.cache.set_pins(pins)
        # pinned models not yet here are placed the way prefetches are: when idle, into free room
        prefetch = [m for m in actions.get("prefetch") or () if m in known]
        place = [m for m in actions.get("place") or () if m in known]  # the placement's, not the bandit's
        self.prefetch_wanted = list(dict.fromkeys([*pins, *place, *prefetch]))
        self.placements = frozenset([*pins, *place]) - frozenset(prefetch)
        self.pool = int(actions.get("pool", SHARED))
        self.cascade_replicas = max(int(actions.get("cascade_replicas") or 0), 0)

    def maybe_prefetch(self) -> None:
        running = self._prefetch_task is not None and not self._prefetch_task.done()
        if self.prefetch_wanted and self.idle() and not running:
            self._prefetch_task = asyncio.get_running_loop().create_task(self._prefetch())

    async def _prefetch(self) -> None:
        for model_id in list(self.prefetch_wanted):
            if not self.idle():  # a request came in: it has the replica to itself
                return
            if not self.cache.resident(model_id):
                await self.cache.prefetch(model_id, placement=model_id in self.placements)

    def _export_metrics(self) -> None:
        """Prometheus counters and gauges (deployments.cache_metrics) inside a Serve replica."""
        replica = self._replica_id()
        if replica is None or self._metrics is False:
            return
        if self._metrics is None:
            try:
                from deployments.cache_metrics import CacheMetrics

                self._metrics = CacheMetrics("BaseModel", replica)
            except Exception:  # metrics are an extra: never let them take the loop down
                logger.exception("cache metrics unavailable on this replica")
                self._metrics = False
                return
        self._metrics.update(self.cache.counters(), self.queue_len, self.cache.gpu_used(),
                             self.cache.host_used())


def _ewma(mean: float | None, value: float) -> float:
    return value if mean is None else mean + EWMA_WEIGHT * (value - mean)


async def _awaitable(ref):
    return await ref
