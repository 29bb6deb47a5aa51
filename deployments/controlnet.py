"""ControlNet deployment: preprocessing always, ControlNet residuals in `remote` mode.

Two ways ControlNet outputs can reach the denoising loop (config `controlnet_mode`):
- colocated (default): this deployment preprocesses the upload; the BaseModel replica loads the
  ControlNet module next to its UNet and runs it in-process every step.
- remote: the BaseModel replica holds an empty (meta-device) ControlNet whose forward calls
  `residuals` here once per denoising step; this deployment owns the weights and scales alone.
benchmarks/controlnet_placement.py measures both.

Which ControlNets this deployment keeps loaded: under `control.policies: coordinator` a ModelCache
of its own (deployments/model_cache.py: the same byte budgets, eviction policy and host tier as a
BaseModel replica's); under `ray-default` the engine's count-based LRU, as before.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import torch

from deployments.config import ServeConfig
from deployments import preprocessors
from deployments.model_cache import ModelCache, room_wait_s
from deployments.pipeline_engine import EngineModels, PipelineEngine, default_gpu_budget
from policies.eviction import EVICTION


class ControlNet:
    def __init__(self, config: dict | ServeConfig):
        self.config = config if isinstance(config, ServeConfig) else ServeConfig.model_validate(config)
        # The same loader (registry, dtype, per-replica LRU) a BaseModel replica uses in
        # colocated mode, so both placements run identical ControlNet weights.
        self.engine = PipelineEngine(self.config)
        self.device = self.engine.device
        self.cache: ModelCache | None = None
        control = self.config.control
        if control.policies == "coordinator":
            self.cache = ModelCache(EngineModels(self.engine),
                                    control.gpu_budget_bytes or default_gpu_budget(self.device),
                                    control.host_budget_bytes,
                                    EVICTION.create(control.eviction, **control.eviction_args))
        # One preprocessing pass at start-up (PIL decode, OpenCV): the first user request paid it.
        started = time.perf_counter()
        preprocessors.prepare(np.zeros((8, 8, 3), np.uint8), "canny", 8, 8)
        self.warm_up_s = self.engine.warm_up() + time.perf_counter() - started

    async def ready(self) -> dict:
        """A cheap call the ingress makes at start-up (see BaseModel.ready)."""
        return {"warm_up_s": round(self.warm_up_s, 3)}

    async def preprocess(self, image: bytes, preprocessor: str, width: int, height: int,
                         field: str = "controlnets.image") -> np.ndarray:
        """Uploaded PNG/JPEG bytes -> conditioning image (uint8 HxWx3) at the output size;
        a RequestError names `field` when the bytes are not an image, and its sibling
        `...preprocessor` (e.g. `controlnets[0].preprocessor`) when the preprocessor fails."""
        preprocessor_field = field.rsplit(".", 1)[0] + ".preprocessor"

        def decode_and_prepare() -> np.ndarray:  # decompression and OpenCV: off the loop
            decoded = preprocessors.decode_image(image, field, self.config.limits.max_image_pixels)
            return preprocessors.prepare(decoded, preprocessor, width, height, preprocessor_field)

        return await asyncio.to_thread(decode_and_prepare)

    async def config_of(self, controlnet_id: str) -> dict:
        if self.cache is None:
            return dict((await self._engine_controlnet(controlnet_id)).config)
        wait_s = room_wait_s(self.config.slo.latency_s)
        async with self.cache.use([controlnet_id], wait_s=wait_s) as (model,):
            return dict(model.config)

    async def residuals(self, controlnet_id: str, sample: torch.Tensor, timestep, encoder_hidden_states,
                        controlnet_cond: torch.Tensor, conditioning_scale: float, guess_mode: bool):
        """One ControlNet forward: (down-block residuals, mid-block residual), on the CPU. The
        forward runs on the replica's event loop, as the synchronous method before it did: a
        per-step call is milliseconds and a thread hop each step would add to every one."""
        if self.cache is None:
            return self._forward(await self._engine_controlnet(controlnet_id), sample, timestep,
                                 encoder_hidden_states, controlnet_cond, conditioning_scale, guess_mode)
        wait_s = room_wait_s(self.config.slo.latency_s)
        async with self.cache.use([controlnet_id], wait_s=wait_s) as (model,):
            return self._forward(model, sample, timestep, encoder_hidden_states, controlnet_cond,
                                 conditioning_scale, guess_mode)

    async def _engine_controlnet(self, controlnet_id: str):
        """(ray-default) The engine's cached module on the loop (every step asks), a load from
        disk in a worker thread."""
        if controlnet_id in self.engine._controlnets:
            return self.engine.load_controlnet(controlnet_id)
        return await asyncio.to_thread(self.engine.load_controlnet, controlnet_id)

    def _forward(self, model, sample, timestep, encoder_hidden_states, controlnet_cond,
                 conditioning_scale, guess_mode):
        with torch.inference_mode():
            down, mid = model(sample.to(self.device), timestep,
                              encoder_hidden_states=encoder_hidden_states.to(self.device),
                              controlnet_cond=controlnet_cond.to(self.device),
                              conditioning_scale=conditioning_scale, guess_mode=guess_mode,
                              return_dict=False)
        return [d.cpu() for d in down], mid.cpu()

    async def cache_state(self) -> dict:
        """What this replica's ControlNet cache holds (ray-default: the engine's LRU)."""
        if self.cache is None:
            return {"policy": "lru-count", "gpu": {cn: {} for cn in self.engine._controlnets}}
        return self.cache.state()


def remote_controlnet(controlnet_id: str, model_config: dict, call,
                      device: str = "cpu") -> torch.nn.Module:
    """An empty ControlNetModel (no weights) whose forward is `call(...)` on a remote replica.

    It keeps the real class and config so diffusers' ControlNet pipelines accept it unchanged.
    `call(controlnet_id, sample, timestep, ehs, cond, scale, guess_mode)` returns residuals.
    """
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    class RemoteControlNetModel(ControlNetModel):
        def forward(self, sample, timestep, encoder_hidden_states=None, controlnet_cond=None,
                    conditioning_scale=1.0, guess_mode=False, return_dict=False, **_):
            started = time.perf_counter()
            down, mid = call(controlnet_id, sample, timestep, encoder_hidden_states,
                             controlnet_cond, float(conditioning_scale), bool(guess_mode))
            self.remote_seconds += time.perf_counter() - started
            self.remote_calls += 1
            return down, mid

    with init_empty_weights():
        module = RemoteControlNetModel.from_config(model_config)
    # Drop the (meta-device) layers and keep one empty parameter where the pipeline computes:
    # pipelines infer their device and dtype from components' parameters ("controlnet" sorts
    # first), and a meta device there sends the prompt's token ids to meta.
    module._modules.clear()
    module.register_parameter("anchor", torch.nn.Parameter(torch.empty(0, device=device),
                                                           requires_grad=False))
    module.remote_seconds = 0.0
    module.remote_calls = 0
    return module
