"""BaseModel deployment: diffusers pipelines by base-model id, behind one of two caches.

- `control.policies: coordinator`: the replica's own `ModelCache` (deployments/model_cache.py):
  one device byte budget for base pipelines and colocated ControlNets, a host-memory tier under
  it, victims from the `control.eviction` policy, pins and idle prefetches from the coordinator
  (replica_control.py runs the report loop). The replica publishes what it holds to the cache-
  aware router (`record_routing_stats`) and the autoscaler (`record_autoscaling_stats`).
  With `control.compute_slots` k, at most k replicas on the machine compute at once
  (deployments/compute_slots.py); a request waiting for a slot counts it as queueing.
- `ray-default`: Ray Serve's `serve.multiplexed`, at most `cache.base_models_per_replica`
  pipelines, count-based LRU, as before this issue (the baseline the benchmark compares against).

Adapters are fetched from the LoRA store before the replica's execution lock is taken, so
fetching overlaps the previous request's denoising; only the (milliseconds) hotswap runs under it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import nullcontext

from deployments.compute_slots import ComputeSlots
from deployments.config import ServeConfig
from deployments.errors import check_deadline
from deployments.lora_format import pin_adapter
from deployments.model_cache import room_wait_s
from deployments.pipeline_engine import LoadedPipeline, PipelineEngine
from deployments.replica_control import ReplicaControl
from deployments.spec import GenerationResult, GenerationSpec
from policies.load_ahead import ahead_tiers

logger = logging.getLogger(__name__)


class BaseModel:
    def __init__(self, config: dict | ServeConfig, lora_store=None, controlnet=None):
        self.config = config if isinstance(config, ServeConfig) else ServeConfig.model_validate(config)
        self.engine = PipelineEngine(self.config)
        self.lora_store = lora_store
        self.controlnet = controlnet
        # One execution lock per replica: a pipeline's LoRA slots and the device are shared state,
        # and serialising is what keeps one request's adapters out of another's image.
        self._lock = asyncio.Lock()
        self._remote_nets: dict[str, object] = {}
        self._ahead_tasks: set[asyncio.Task] = set()  # loads ahead being started (kept referenced)
        # where a load ahead may read from: on a GPU not local files (policies.load_ahead)
        self._ahead_tiers = ahead_tiers(self.config.control.load_ahead_from, self.engine.device.startswith("cuda"))
        self.coordinated = self.config.control.policies == "coordinator"
        # at most compute_slots replicas on this machine compute at once (coordinator set only)
        slots = self.config.control.compute_slots
        self.slots = ComputeSlots(slots) if self.coordinated and slots else None
        # queue, timings, cache and coordinator loop; the stats methods below read it
        self.control = ReplicaControl(self.config, self.engine, self._multiplexed_pipelines,
                                      replica_id=_replica_id)
        self.cache = self.control.cache  # None under ray-default
        self._loader = None
        if not self.coordinated:
            from ray import serve

            # A plain function, not a bound method: serve.multiplexed keeps its cache as an
            # attribute of the function object it wraps, which a bound method cannot hold.
            async def load(model_id: str) -> LoadedPipeline:
                return await asyncio.to_thread(self.engine.load_pipeline, model_id)

            self._loader = load
            self.get_pipeline = serve.multiplexed(
                max_num_models_per_replica=self.config.cache.base_models_per_replica)(load)
        # Before Serve marks the replica ready, so no user request pays the one-time work.
        self.warm_up_s = self.engine.warm_up()
        self.control.start()  # the coordinator loop, when there is an event loop (a replica)

    async def ready(self) -> dict:
        """A cheap call the ingress makes at start-up: it opens the handle's path to a replica
        (the first call through a fresh handle waited seconds), and says what warm-up cost."""
        self.control.start()
        return {"warm_up_s": round(self.warm_up_s, 3)}

    # -- what Ray Serve and the operator read ----------------------------------------------
    async def record_routing_stats(self) -> dict:
        """S1: what the cache-aware router ranks this replica by. Ray Serve calls it every
        `request_routing_stats_period_s` (async, so it reads the cache on the loop that
        mutates it); an exception keeps the router's previous stats."""
        self.control.start()
        return self.control.routing_stats()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """S2: custom autoscaling metrics, every value an int or float (Ray disables custom
        metrics for the replica's lifetime if the first dict has any other value type)."""
        return self.control.autoscaling_stats()

    async def cache_state(self) -> dict:
        """What this replica holds by tier, pins, pool, counters and coordinator reachability."""
        return self.control.cache_state()

    async def coordinator_call(self, method: str, *args) -> dict:
        """`view`, `pin` or `unpin` on the deployment's coordinator (GET /v1/cache and the pin
        endpoints go through a replica: the deployment-scoped actor is looked up from one)."""
        import ray

        from deployments.errors import CoordinatorUnavailableError
        from deployments.replica_control import REPORT_TIMEOUT_S, deployment_coordinator

        if method not in ("view", "pin", "unpin", "cascade_report", "cascade_view"):
            raise ValueError(f"unknown coordinator method {method!r}")
        if not self.coordinated:
            raise RuntimeError("this deployment runs control.policies: ray-default (no coordinator)")
        try:
            actor = await asyncio.wait_for(asyncio.to_thread(deployment_coordinator), REPORT_TIMEOUT_S)
            ref = getattr(actor, method).remote(*args)
        except Exception as exc:  # ValueError while Serve recreates it, a timeout, a dead handle
            raise CoordinatorUnavailableError(f"{type(exc).__name__}: {exc}") from None
        try:
            return await asyncio.wait_for(ref, 10.0)
        except (asyncio.TimeoutError, ray.exceptions.RayActorError) as exc:
            raise CoordinatorUnavailableError(type(exc).__name__) from None

    async def loaded_models(self) -> dict:
        pipelines = (self.cache.objects() if self.coordinated else self._multiplexed_pipelines())
        return {model_id: {"lora_slots": list(p.slots.holding), "swaps": p.slots.swaps,
                           "load_seconds": round(p.load_seconds, 4)}
                for model_id, p in pipelines.items() if isinstance(p, LoadedPipeline)}

    def _multiplexed_pipelines(self) -> dict:
        wrapper = getattr(self._loader, "__serve_multiplex_wrapper", None)
        return dict(wrapper.models) if wrapper is not None else {}

    # -- serving ----------------------------------------------------------------------------
    async def generate(self, spec: GenerationSpec, control_images=None) -> GenerationResult:
        self.control.start()
        check_deadline(spec.deadline, "queued", time.time())  # late out of Ray's queue
        started = time.perf_counter()
        with self.control.request(spec) as record:
            if self.coordinated:
                result = await self._generate(spec, control_images, started)
            else:
                loaded = await self._acquire(spec.base_model)
                try:
                    result = await self._generate(spec, control_images, started, loaded)
                finally:
                    loaded.release()
            record(result)
            return result

    async def _acquire(self, model_id: str) -> LoadedPipeline:
        """(ray-default) The pipeline for `model_id`, counted in use so an eviction by
        serve.multiplexed cannot free it mid-request."""
        for _ in range(3):
            loaded = await self.get_pipeline(model_id)
            if loaded.acquire():
                return loaded
            # evicted and freed between the cache lookup and here: the next lookup reloads it
        raise RuntimeError(f"base model {model_id!r} was evicted repeatedly while loading; "
                           "raise cache.base_models_per_replica")

    async def _fetch_adapters(self, adapter_ids: list[str]) -> tuple[dict, float]:
        """(tensors of ``adapter_ids``, seconds spent fetching from the LoRA store): from the
        adapter host tier, else from the store."""
        if not adapter_ids:
            return {}, 0.0
        if self.lora_store is None:
            raise RuntimeError("this BaseModel has no LoRA store to fetch adapters from")
        tier = self.control.adapters  # the coordinator set's host tier for adapters (or None)
        found, adapter_ids = tier.take(adapter_ids) if tier is not None else ({}, adapter_ids)
        elapsed = 0.0
        if adapter_ids:
            started = time.perf_counter()
            infos = await asyncio.gather(*(self.lora_store.get.remote(a) for a in adapter_ids))
            tensors = await asyncio.gather(*(_resolve(info["ref"]) for info in infos))
            elapsed = time.perf_counter() - started
            fetch_s = elapsed / len(adapter_ids)
            self.control.record_adapter_fetch(fetch_s)
            for a, info, t in zip(adapter_ids, infos, tensors):
                found[a] = t = pin_adapter(t)  # kept pinned in the adapter tier too
                if tier is not None:
                    tier.put(a, t, int(info.get("bytes") or 0), fetch_s)
        return found, elapsed

    async def _remote_controlnets(self, controlnet_ids: list[str]):
        """ControlNet modules that call the ControlNet deployment once per step; one per id,
        built once (the module has no weights, only the config the pipeline reads)."""
        from deployments.controlnet import remote_controlnet

        handle = self.controlnet

        def call(*args):
            # Runs in the pipeline's worker thread, where blocking on a response is allowed.
            return handle.residuals.remote(*args).result()

        for cn_id in controlnet_ids:
            if cn_id not in self._remote_nets:
                config = await handle.config_of.remote(cn_id)
                self._remote_nets[cn_id] = remote_controlnet(cn_id, config, call, self.engine.device)
        return self._remote_nets.__getitem__

    async def _generate(self, spec: GenerationSpec, control_images, started: float,
                        loaded: LoadedPipeline | None = None) -> GenerationResult:
        """One request under the replica's execution lock. `loaded`: ray-default's pipeline,
        acquired before the call (serve.multiplexed). None: the coordinator's replica cache,
        whose models are taken under the lock, so only the running request holds leases (queued
        requests holding them filled the device budget and made later requests wait for room,
        a wait counted as load time). With `control.load_ahead`, a queued request first starts
        loading what it lacks into room no other request here needs, so its load overlaps the
        running request's compute; its acquire under the lock takes that load over. Adapters the
        pipeline's slots lack are fetched before the lock, and under it whatever another request
        swapped out meanwhile. `load_s` counts everything
        before the lock (the multiplexed lookup, adapter fetches) and the cache's loads."""
        colocated = self.config.controlnet_mode == "colocated"
        ahead = loaded is None and self.config.control.load_ahead
        if ahead and self.control.earlier_ready(spec):
            # a task, not awaited: choosing its room may wait on evictions, and this request
            # must keep its place in the replica's queue meanwhile (or one behind it takes the
            # lock first and evicts what was loaded for this one). It never evicts what the
            # replica's other requests need.
            task = asyncio.get_running_loop().create_task(
                self.cache.load_ahead(self.control.models_of(spec), self.control.needed_by_others(spec),
                                      self._ahead_tiers))
            self._ahead_tasks.add(task)
            task.add_done_callback(self._ahead_done)
        wanted = [a for a, _ in spec.loras]
        resident = loaded if loaded is not None else self.cache.objects().get(spec.base_model)
        lacking = (resident.slots.missing(wanted) if resident is not None and resident.slots is not None
                   else wanted)
        adapters, fetch_s = await self._fetch_adapters(lacking)
        factory = None
        if spec.controlnets and not colocated:
            factory = await self._remote_controlnets([cn for cn, _ in spec.controlnets])
        before_lock_s = time.perf_counter() - started
        lock_started = time.perf_counter()
        async with self._lock:
            queue_s = time.perf_counter() - lock_started
            # after the wait for the lock (the replica's queue): a request whose client has
            # given up is dropped before it takes the device (and between steps once running)
            check_deadline(spec.deadline, "queued", time.time())
            leases, lease_s = [], 0.0
            if loaded is None:
                # what the requests queued behind this one need is evicted last
                spare = self.control.needed_by_others(spec) if ahead else frozenset()
                leases = await self.cache.acquire(self.control.models_of(spec),
                                                  wait_s=room_wait_s(self.config.slo.latency_s), spare=spare)
                lease_s = time.perf_counter() - lock_started - queue_s
                loaded = leases[0].obj
                if spec.controlnets and colocated:
                    factory = {lease.model_id: lease.obj for lease in leases[1:]}.__getitem__
            try:
                more, more_s = await self._fetch_adapters(
                    [a for a in loaded.slots.missing(wanted) if a not in adapters])
                adapters.update(more)
                fetch_s += more_s
                async with (self.slots.hold() if self.slots is not None else nullcontext(0.0)) as slot_s:
                    self.control.computing(spec)  # the drain time counts its compute down from here
                    result = await asyncio.to_thread(
                        self.engine.generate, loaded, spec, adapters, control_images, factory)
            finally:
                if leases:
                    self.cache.release(leases)
        self.control.record_adapter_swap(result)
        result.timings["queue_s"] = queue_s + slot_s  # the machine's compute slots are a queue too
        result.timings["slot_s"] = slot_s
        result.timings["load_s"] += before_lock_s + lease_s
        result.timings["fetch_s"] = fetch_s  # the store fetches (before and under the lock)
        result.replica = _replica_id()
        return result

    def _ahead_done(self, task: asyncio.Task) -> None:
        self._ahead_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the request's acquire meets it again
            logger.warning("load ahead failed: %r", task.exception())


def _replica_id() -> str | None:
    """This replica's Serve id (the response names who answered); None outside Serve."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:
        return None


async def _resolve(ref):
    """An object ref from the LoRA store (or tensors, when it runs outside Ray)."""
    import ray

    return await ref if isinstance(ref, ray.ObjectRef) else ref
