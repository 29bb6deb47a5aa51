"""The torch/diffusers side of a BaseModel replica, usable without Ray.

Loads base pipelines (SD 1.x or SDXL class) and ControlNets through diffusers' own loaders, puts
LoRA adapters into pre-allocated hotswap slots, and runs generation. The Ray deployment wraps this
with its model cache (`EngineModels` is what `deployments.model_cache` loads through) or
`serve.multiplexed`, the LoRA store and the ControlNet deployment; tests drive it directly.
Callers serialise `generate` per engine: a pipeline's LoRA slots are replica-wide state.
"""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deployments import direct_load
from deployments.config import ServeConfig
from deployments.errors import ModelLoadError, check_deadline
from deployments.lora_bank import LoraBank
from deployments.lora_slots import LoraSlots
from deployments.pinned_moves import move_tensors
from deployments.spec import GenerationResult, GenerationSpec
from policies.snapshot import BASE, CONTROLNET, DISK, REMOTE

logger = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# One model construction at a time per process: diffusers' and transformers' loaders build modules
# under accelerate's `init_empty_weights`, which patches `nn.Module.register_parameter` for the
# whole process (diffusers#4296, peft#3605), so a second load in another thread got meta tensors
# ("Cannot copy out of meta tensor", seen when a queued request's load ahead overlapped another).
_construct_lock = threading.Lock()


@dataclass
class LoadedPipeline:
    model_id: str
    pipe: object
    slots: LoraSlots | LoraBank  # by cache.lora_mode: slots / merge
    load_seconds: float
    loader: str = "diffusers"  # which read it: "direct" (direct_load.py) or "diffusers"
    # ControlNet pipelines built over `pipe`'s modules (controlnet_wrapper), by the identity of
    # their ControlNet modules: with diffusers' from_pipe one cost ~16 ms per request
    # (controlnet_placement.py); built by the constructor, ~0.3 ms, and still kept.
    controlnet_pipes: OrderedDict = field(default_factory=OrderedDict)
    # serve.multiplexed evicts by calling __del__ from an executor thread while other requests
    # may still hold this pipeline; the weights are freed when the last of them is done.
    _users: int = 0
    _evicted: bool = False
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self) -> bool:
        """Count a user in; False when the pipeline was already freed (load it again)."""
        with self._guard:
            if self.pipe is None:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        with self._guard:
            self._users -= 1
            free = self._evicted and self._users == 0
        if free:
            self._free()

    def __del__(self):
        with self._guard:
            self._evicted = True
            free = self._users == 0
        if free:
            self._free()

    def _free(self) -> None:
        self.pipe = None
        self.slots = None
        self.controlnet_pipes = OrderedDict()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class PipelineEngine:
    def __init__(self, config: ServeConfig, device: str | None = None):
        self.config = config
        self.device = device or pick_device()
        self._controlnets: OrderedDict[str, object] = OrderedDict()

    def warm_up(self) -> float:
        """Do a replica's one-time work before it serves: import the pipeline classes a load and
        a ControlNet request use, and run one small convolution so the device's kernels are
        initialised. Measured on a fresh service on this machine, the first load cost 1.0 s
        against 0.4 s warm when this was left to the first request. Returns the seconds spent."""
        started = time.perf_counter()
        import diffusers.loaders.lora_pipeline  # noqa: F401  (the LoRA-state readers)
        from diffusers import (  # noqa: F401
            ControlNetModel,
            StableDiffusionControlNetPipeline,
            StableDiffusionPipeline,
        )

        with torch.inference_mode():
            x = torch.zeros(1, 4, 8, 8, device=self.device)
            torch.nn.functional.conv2d(x, torch.zeros(4, 4, 3, 3, device=self.device), padding=1).sum().item()
        return time.perf_counter() - started

    # -- loading ----------------------------------------------------------------------------
    def load_pipeline(self, model_id: str) -> LoadedPipeline:
        """Load base model `model_id` with its LoRA slots; ModelLoadError names it on failure."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        entry = self.config.entry(model_id)
        started = time.perf_counter()
        cls = StableDiffusionXLPipeline if entry.arch == "sdxl" else StableDiffusionPipeline
        source = self.config.resolve_source(entry)
        try:
            with _construct_lock:
                pipe, loader = self._read_pipeline(cls, source, _DTYPES[entry.dtype])
                pipe.to(self.device)
                pipe.set_progress_bar_config(disable=True)
                slots = self._lora_holder(pipe)
        except Exception as exc:  # diffusers raises OSError/ValueError/EnvironmentError/...
            raise ModelLoadError(model_id, f"{type(exc).__name__}: {exc}") from exc
        return LoadedPipeline(model_id, pipe, slots, time.perf_counter() - started, loader)

    def _read_pipeline(self, cls, source: str, dtype: torch.dtype):
        """The direct loader (deployments/direct_load.py) for a local folder it can read when
        `cache.pipeline_loader` picks it, else diffusers' `from_pretrained`, straight onto a CUDA
        device (device_map); (pipeline, which loader read it)."""
        kwargs = dict(safety_checker=None, requires_safety_checker=False)
        loader = self.config.cache.pipeline_loader
        if loader == "auto":
            loader = "direct" if self.device.startswith("cuda") else "diffusers"
        if loader == "direct" and Path(source).is_dir():
            try:
                return direct_load.load_pipeline(cls, source, self.device, dtype, **kwargs), "direct"
            except direct_load.Unsupported as exc:
                logger.info("direct load of %s not possible (%s); using diffusers' loader", source, exc)
            except Exception as exc:  # a damaged folder: diffusers' loader names the problem
                logger.warning("direct load of %s failed (%s: %s); trying diffusers' loader",
                               source, type(exc).__name__, exc)
        pipe = cls.from_pretrained(source, torch_dtype=dtype, **kwargs,
                                   device_map=self.device if self.device == "cuda" else None)
        return pipe, "diffusers"

    def _lora_holder(self, pipe) -> LoraSlots | LoraBank:
        cache = self.config.cache
        if cache.lora_mode == "merge":
            return LoraBank(pipe.unet, cache.lora_slots, cache.lora_max_rank)
        return LoraSlots(pipe, cache.lora_slots, cache.lora_max_rank)

    def load_controlnet(self, controlnet_id: str):
        """A ControlNetModel from the engine's own count-based LRU (`cache.controlnets_per_replica`),
        the `ray-default` control set's cache; the coordinator set uses a ModelCache instead."""
        if controlnet_id in self._controlnets:
            self._controlnets.move_to_end(controlnet_id)
            return self._controlnets[controlnet_id]
        model = self.load_controlnet_model(controlnet_id)
        self._controlnets[controlnet_id] = model
        while len(self._controlnets) > self.config.cache.controlnets_per_replica:
            self._controlnets.popitem(last=False)
        return model

    def load_controlnet_model(self, controlnet_id: str):
        """Load ControlNet `controlnet_id` onto the device (no caching); ModelLoadError on failure."""
        from diffusers import ControlNetModel

        entry = self.config.entry(controlnet_id)
        try:
            with _construct_lock:
                model = ControlNetModel.from_pretrained(self.config.resolve_source(entry),
                                                        torch_dtype=_DTYPES[entry.dtype],
                                                        device_map=self.device if self.device == "cuda" else None)
                model.to(self.device)
        except Exception as exc:
            raise ModelLoadError(controlnet_id, f"{type(exc).__name__}: {exc}") from exc
        return model

    # -- generation -------------------------------------------------------------------------
    def generate(self, loaded: LoadedPipeline, spec: GenerationSpec,
                 lora_weights: Mapping[str, dict[str, torch.Tensor]] | None = None,
                 control_images: list[np.ndarray] | None = None,
                 controlnet_factory: Callable[[str], object] | None = None) -> GenerationResult:
        """Run one request. `lora_weights` holds the adapters `loaded.slots.missing()` named;
        `control_images` are preprocessed uint8 HxWx3 images, one per spec.controlnets entry;
        `controlnet_factory` overrides where ControlNet modules come from (remote mode).

        Under `cache.lora_mode` merge the adapters are copied to the device if they are not
        there (timings swap_s), the previous request's merged adapters are taken out (unmerge_s,
        0 when this request uses the same ones: they stay merged) and this request's merged in
        (merge_s); all of it is part of load_s. Under slots they are swapped into the hotswap slots."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        loras = list(spec.loras)
        merging = self.config.cache.lora_mode == "merge"
        place = loaded.slots.stage if merging else loaded.slots.activate
        swapped = place(loras, lora_weights or {})
        timings["swap_s"] = time.perf_counter() - started  # the adapters' copy or slot swap alone
        pipe = loaded.pipe
        kwargs: dict = {}
        if spec.controlnets:
            factory = controlnet_factory or self.load_controlnet
            nets = [factory(cn_id) for cn_id, _ in spec.controlnets]
            pipe = self._controlnet_pipeline(loaded, nets)
            images = [_to_pil(img) for img in (control_images or [])]
            if len(images) != len(nets):
                raise ValueError("one control image per ControlNet is required")
            scales = [scale for _, scale in spec.controlnets]
            kwargs["image"] = images[0] if len(nets) == 1 else images
            kwargs["controlnet_conditioning_scale"] = scales[0] if len(nets) == 1 else scales

        if spec.deadline is not None:  # checked between denoising steps: late work stops early
            kwargs["callback_on_step_end"] = deadline_hook(spec.deadline)
        if merging:  # restores itself if it fails half-way
            timings["unmerge_s"], timings["merge_s"] = loaded.slots.merge(loras)
        try:
            timings["load_s"] = time.perf_counter() - started
            started = time.perf_counter()
            generators = [torch.Generator(device="cpu").manual_seed(spec.seed + i) for i in range(spec.n)]
            with torch.inference_mode():
                output = pipe(
                    prompt=spec.prompt, negative_prompt=spec.negative_prompt,
                    num_inference_steps=spec.steps, guidance_scale=spec.guidance_scale,
                    height=spec.height, width=spec.width, num_images_per_prompt=spec.n,
                    generator=generators, output_type="np", **kwargs)
            images = [(np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8) for img in output.images]
            timings["inference_s"] = time.perf_counter() - started
        except BaseException:
            if merging:  # a failed request leaves the base weights as they were
                loaded.slots.restore()
            raise
        return GenerationResult(images=images, timings=timings, adapters_swapped=swapped)

    def _controlnet_pipeline(self, loaded: LoadedPipeline, nets: list):
        """A ControlNet pipeline sharing the loaded pipeline's modules (and so its LoRA slots)."""
        from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        key = tuple(id(net) for net in nets)
        cached = loaded.controlnet_pipes.get(key)
        # Identity, not ids: a ControlNet evicted and reloaded is a new module, and a pipeline
        # holding the old one would keep its weights alive and run stale code.
        if cached is not None and all(a is b for a, b in zip(cached[0], nets)):
            loaded.controlnet_pipes.move_to_end(key)
            return cached[1]
        cls = (StableDiffusionXLControlNetPipeline if self.config.entry(loaded.model_id).arch == "sdxl"
               else StableDiffusionControlNetPipeline)
        controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
        pipe = controlnet_wrapper(cls, loaded.pipe, controlnet)
        loaded.controlnet_pipes[key] = (tuple(nets), pipe)
        while len(loaded.controlnet_pipes) > self.config.cache.controlnets_per_replica:
            loaded.controlnet_pipes.popitem(last=False)
        return pipe


def controlnet_wrapper(cls: type, pipe, controlnet):
    """A ``cls`` ControlNet pipeline over ``pipe``'s own modules (the same objects, nothing copied)
    and ``controlnet``, built with the class's constructor.

    What diffusers' ``from_pipe`` builds, minus its closing ``.to(dtype)`` walk over every module
    of the pipeline (the modules already sit on the device in their dtype): on the tiny demo
    models that walk was 9 ms of a 9.3 ms build, paid on each first use of a ControlNet with a
    base model on a replica and counted in the request's load_s."""
    components = pipe.components
    config = pipe.config
    kwargs = {}
    for name in _init_params(cls):
        if name in components:
            kwargs[name] = components[name]
        elif name in config:  # options the pipeline recorded (requires_safety_checker, ...)
            kwargs[name] = config[name]
    wrapper = cls(**kwargs, controlnet=controlnet)
    wrapper.set_progress_bar_config(disable=True)
    return wrapper


@functools.cache
def _init_params(cls: type) -> tuple[str, ...]:
    """Named parameters of ``cls.__init__`` other than ``self`` and ``controlnet``."""
    return tuple(name for name, param in inspect.signature(cls.__init__).parameters.items()
                 if name not in ("self", "controlnet")
                 and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY))


def default_gpu_budget(device: str) -> int:
    """`control.gpu_budget_bytes` when unset: 90% of the CUDA device's memory, 2 GiB on a CPU."""
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * 0.9)
    return 2 << 30


class EngineModels:
    """The `deployments.model_cache.ModelSource` of a PipelineEngine: base pipelines (with their
    LoRA slots or bank) and ControlNet modules. Moving to the host tier copies the tensors into
    pinned host memory on a GPU, and is nothing on a CPU replica (the object is kept as it is)."""

    _WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.ckpt")

    def __init__(self, engine: PipelineEngine):
        self.engine = engine
        self._disk: dict[str, int] = {}
        # pipelines loaded here, to drop their ControlNet pipelines when a ControlNet is freed
        self._pipelines: weakref.WeakValueDictionary[int, LoadedPipeline] = weakref.WeakValueDictionary()

    def kind(self, model_id: str) -> int:
        kind = self.engine.config.entry(model_id).kind
        if kind not in ("base", "controlnet"):
            raise ValueError(f"{model_id!r} is a {kind}; the model cache holds base models and ControlNets")
        return BASE if kind == "base" else CONTROLNET

    def source_tier(self, model_id: str) -> int:
        return DISK if self.engine.config.entry(model_id).path else REMOTE

    def estimate_bytes(self, model_id: str) -> int:
        """Size on disk (`size_bytes` from the registry, else the weight files'), times 1.5 for a
        base model: its LoRA slots or bank and pristine copies are made at load and are not on
        disk (the cache learns the real ratio from its first load). 0 for a hub model without
        `size_bytes`: the cache then reserves the measured size right after the load."""
        entry = self.engine.config.entry(model_id)
        if entry.size_bytes is not None:
            self._disk[model_id] = entry.size_bytes
        elif model_id not in self._disk:
            root = Path(self.engine.config.resolve_source(entry))
            files = {f for pattern in self._WEIGHTS for f in root.rglob(pattern)} if root.is_dir() else set()
            self._disk[model_id] = sum(f.stat().st_size for f in files)
        return int(self._disk[model_id] * (1.5 if entry.kind == "base" else 1.0))

    def load(self, model_id: str) -> object:
        if self.kind(model_id) == CONTROLNET:
            return self.engine.load_controlnet_model(model_id)
        loaded = self.engine.load_pipeline(model_id)
        self._pipelines[id(loaded)] = loaded
        return loaded

    def size_of(self, obj: object) -> int:
        """Device bytes: every module's tensors, plus what a pipeline's LoRA holder keeps outside
        them (a LoRA bank's resident adapters)."""
        tensors = {t.data_ptr(): t.numel() * t.element_size() for m in _modules(obj)
                   for t in (*m.parameters(), *m.buffers())}
        extra = obj.slots.reserved_bytes() if isinstance(obj, LoadedPipeline) else 0
        return sum(tensors.values()) + extra

    def to_host(self, obj: object) -> object:
        return self._move(obj, "cpu")

    def to_device(self, obj: object) -> object:
        return self._move(obj, self.engine.device)

    def _move(self, obj: object, device: str) -> object:
        """Host-tier moves: into pinned host memory and back by async copies (pinned_moves.py);
        a LoRA bank's resident adapters go with their pipeline."""
        if self.engine.device == "cpu":
            return obj
        move_tensors(_modules(obj), device)
        if isinstance(obj, LoadedPipeline):
            obj.slots.to(device)
        if device == "cpu":
            torch.cuda.empty_cache()
        return obj

    def free(self, obj: object) -> None:
        if isinstance(obj, LoadedPipeline):
            obj._free()
            return
        for loaded in list(self._pipelines.values()):
            for key, (nets, _) in list(loaded.controlnet_pipes.items()):
                if any(net is obj for net in nets):
                    del loaded.controlnet_pipes[key]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _modules(obj: object) -> list[torch.nn.Module]:
    """A pipeline's modules, or the ControlNet module itself."""
    if isinstance(obj, LoadedPipeline):
        return [m for m in obj.pipe.components.values() if isinstance(m, torch.nn.Module)]
    return [obj]


def deadline_hook(deadline: float, clock: Callable[[], float] = time.time) -> Callable:
    """A diffusers `callback_on_step_end` that stops the denoising loop (DeadlineExceededError,
    "running") once `clock()` is past `deadline`, instead of finishing an image nobody awaits."""

    def hook(_pipe, _step: int, _timestep, callback_kwargs: dict) -> dict:
        check_deadline(deadline, "running", clock())
        return callback_kwargs

    return hook


def _to_pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
