"""BaseModel deployment: diffusers pipelines multiplexed by base-model id.

Ray Serve's `serve.multiplexed` keeps up to `cache.base_models_per_replica` pipelines per replica
and tells the router which replica holds which model, so requests follow the cache. Adapters are
fetched from the LoRA store before the replica's execution lock is taken, so fetching overlaps
the previous request's denoising; only the (milliseconds) hotswap runs under the lock.
"""

from __future__ import annotations

import asyncio
import time

from deployments.config import ServeConfig
from deployments.pipeline_engine import LoadedPipeline, PipelineEngine
from deployments.spec import GenerationResult, GenerationSpec


class BaseModel:
    def __init__(self, config: dict | ServeConfig, lora_store=None, controlnet=None):
        from ray import serve

        self.config = config if isinstance(config, ServeConfig) else ServeConfig.model_validate(config)
        self.engine = PipelineEngine(self.config)
        self.lora_store = lora_store
        self.controlnet = controlnet
        # One execution lock per replica: a pipeline's LoRA slots and the device are shared state,
        # and serialising is what keeps one request's adapters out of another's image.
        self._lock = asyncio.Lock()
        self._remote_nets: dict[str, object] = {}

        # A plain function, not a bound method: serve.multiplexed keeps its cache as an attribute
        # of the function object it wraps, which a bound method cannot hold.
        async def load(model_id: str) -> LoadedPipeline:
            return await asyncio.to_thread(self.engine.load_pipeline, model_id)

        self._loader = load
        self.get_pipeline = serve.multiplexed(
            max_num_models_per_replica=self.config.cache.base_models_per_replica)(load)
        # Before Serve marks the replica ready, so no user request pays the one-time work.
        self.warm_up_s = self.engine.warm_up()

    async def ready(self) -> dict:
        """A cheap call the ingress makes at start-up: it opens the handle's path to a replica
        (the first call through a fresh handle waited seconds), and says what warm-up cost."""
        return {"warm_up_s": round(self.warm_up_s, 3)}

    async def _fetch_adapters(self, adapter_ids: list[str]) -> dict:
        if not adapter_ids:
            return {}
        if self.lora_store is None:
            raise RuntimeError("this BaseModel has no LoRA store to fetch adapters from")
        infos = await asyncio.gather(*(self.lora_store.get.remote(a) for a in adapter_ids))
        tensors = await asyncio.gather(*(_resolve(info["ref"]) for info in infos))
        return dict(zip(adapter_ids, tensors))

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

    async def _acquire(self, model_id: str) -> LoadedPipeline:
        """The pipeline for `model_id`, counted in use so an eviction cannot free it mid-request."""
        for _ in range(3):
            loaded = await self.get_pipeline(model_id)
            if loaded.acquire():
                return loaded
            # evicted and freed between the cache lookup and here: the next lookup reloads it
        raise RuntimeError(f"base model {model_id!r} was evicted repeatedly while loading; "
                           "raise cache.base_models_per_replica")

    async def generate(self, spec: GenerationSpec, control_images=None) -> GenerationResult:
        started = time.perf_counter()
        loaded = await self._acquire(spec.base_model)
        try:
            return await self._generate(loaded, spec, control_images, time.perf_counter() - started)
        finally:
            loaded.release()

    async def _generate(self, loaded: LoadedPipeline, spec: GenerationSpec, control_images,
                        pipeline_s: float) -> GenerationResult:
        wanted = [a for a, _ in spec.loras]
        fetch_started = time.perf_counter()
        prefetched = await self._fetch_adapters(loaded.slots.missing(wanted))
        fetch_s = time.perf_counter() - fetch_started
        factory = None
        if spec.controlnets and self.config.controlnet_mode == "remote":
            factory = await self._remote_controlnets([cn for cn, _ in spec.controlnets])

        lock_started = time.perf_counter()
        async with self._lock:
            queue_s = time.perf_counter() - lock_started
            # Another request may have swapped slots while this one waited for the lock.
            late = await self._fetch_adapters(
                [a for a in loaded.slots.missing(wanted) if a not in prefetched])
            result = await asyncio.to_thread(
                self.engine.generate, loaded, spec, {**prefetched, **late}, control_images, factory)
        result.timings["queue_s"] = queue_s
        result.timings["load_s"] += pipeline_s + fetch_s
        result.replica = _replica_id()
        return result

    async def loaded_models(self) -> dict:
        wrapper = getattr(self._loader, "__serve_multiplex_wrapper", None)
        models = wrapper.models if wrapper is not None else {}
        return {model_id: {"lora_slots": list(p.slots.holding), "swaps": p.slots.swaps,
                           "load_seconds": round(p.load_seconds, 4)}
                for model_id, p in models.items()}


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
