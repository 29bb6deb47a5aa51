"""The one configuration model for the service, loaded from YAML.

Every field has a type, bounds and a description; cross-field errors name the fields involved, so
an operator reading a failed start-up knows exactly which line of the YAML to fix. The simulator
(later) and the live app load this same model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.defaults import DEFAULT_EVICTION
from policies.load_ahead import AheadFrom

LISTED_IDS = 20  # an unknown id's error lists up to this many valid ones, else points to /v1/models

# Ids become dictionary keys, multiplexed-model ids, and (for local layouts) path components. A
# strict charset makes path-shaped ids ("../../etc/passwd") impossible by construction.
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_MODEL_ID_RE = re.compile(MODEL_ID_PATTERN)

ModelKind = Literal["base", "controlnet", "lora", "discriminator"]
DType = Literal["float32", "float16", "bfloat16"]


class ConfigError(ValueError):
    """A configuration that cannot be served; the message names the offending field(s)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    """One model in the registry: a base pipeline, a ControlNet, a LoRA adapter or a discriminator."""

    id: str = Field(description="Registry id used in requests; letters, digits, '.', '_', '-'.")
    kind: ModelKind = Field(description="What the model is.")
    path: str | None = Field(
        default=None, description="Local diffusers folder (or LoRA/discriminator file's folder); "
        "relative paths resolve under `model_root`.")
    hub_id: str | None = Field(
        default=None, description="Hugging Face hub id, used when `path` is not set (needs network).")
    dtype: DType = Field(default="float32", description="Weights dtype on the device.")
    size_bytes: int | None = Field(
        default=None, ge=0, description="Size on disk; measured at start-up when omitted.")
    arch: Literal["sd15", "sdxl"] = Field(
        default="sd15", description="SD 1.x or SDXL: picks the pipeline class for base models and "
        "the format converter for LoRAs.")
    sizes: list[str] = Field(
        default_factory=lambda: ["512x512"],
        description="Image sizes ('WxH') a base model serves; the first is its default.")
    default_steps: int = Field(default=25, ge=1, le=200, description="Steps when a request omits them.")
    default_guidance_scale: float = Field(
        default=5.0, ge=0.0, le=100.0, description="Classifier-free guidance when a request "
        "omits it (distilled models such as SD-Turbo want 0).")
    base_models: list[str] = Field(
        default_factory=list,
        description="For LoRAs and ControlNets: base-model ids they apply to (empty: all).")
    default_preprocessor: str = Field(
        default="canny", description="For ControlNets: preprocessor used when a request names none.")

    @field_validator("id")
    @classmethod
    def _id_is_safe(cls, value: str) -> str:
        if not _MODEL_ID_RE.match(value):
            raise ValueError(f"model id {value!r} must match {MODEL_ID_PATTERN}")
        return value

    @field_validator("sizes")
    @classmethod
    def _sizes_parse(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one size is required")
        for size in value:
            parse_size(size)
        return value

    @model_validator(mode="after")
    def _has_source(self) -> "ModelEntry":
        if not self.path and not self.hub_id:
            raise ValueError(f"model {self.id!r}: set `path` or `hub_id`")
        return self


def parse_size(size: str) -> tuple[int, int]:
    """'WxH' -> (width, height); both multiples of 8 between 8 and 4096."""
    match = re.fullmatch(r"(\d{1,4})x(\d{1,4})", size)
    if not match:
        raise ValueError(f"size {size!r} is not of the form 'WIDTHxHEIGHT'")
    width, height = int(match.group(1)), int(match.group(2))
    if not (8 <= width <= 4096 and 8 <= height <= 4096) or width % 8 or height % 8:
        raise ValueError(f"size {size!r}: width and height must be multiples of 8 in [8, 4096]")
    return width, height


class AutoscalingBounds(_Strict):
    min_replicas: int = Field(default=1, ge=0, le=1024)
    max_replicas: int = Field(default=1, ge=1, le=1024)
    target_ongoing_requests: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingBounds":
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.min_replicas must not exceed autoscaling.max_replicas")
        return self


class DeploymentOptions(_Strict):
    """Ray Serve options for one deployment of the DAG."""

    num_replicas: int = Field(default=1, ge=1, le=1024, description="Fixed replica count "
                              "(ignored when `autoscaling` is set).")
    autoscaling: AutoscalingBounds | None = Field(default=None, description="Replica bounds.")
    max_ongoing_requests: int = Field(default=8, ge=1, le=10_000, description="Requests one "
                                      "replica runs or holds at once (Ray Serve's option).")
    max_queued_requests: int = Field(
        default=64, ge=1, le=100_000, description="Requests each caller's handle holds while "
        "every replica is at max_ongoing_requests (Ray Serve's option); beyond it the call fails "
        "at once with Ray's BackPressureError, a 503 with Retry-After. Bounded so an overload "
        "sheds load instead of growing memory; it also counts requests still being routed, so a "
        "simultaneous burst larger than it is shed even while replicas have room.")
    num_cpus: float = Field(default=0.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs reserved per replica.")
    memory_bytes: int | None = Field(default=None, ge=0, description="Ray memory reservation.")

    def ray_actor_options(self) -> dict:
        options: dict = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        return options


class Deployments(_Strict):
    ingress: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=64),
        description="Its max_ongoing_requests must exceed limits.max_inflight_requests, so health "
        "checks and /v1/models still get in while generation is at its limit.")
    base_model: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=1.0))
    controlnet: DeploymentOptions = Field(default_factory=DeploymentOptions)
    lora_store: DeploymentOptions = Field(default_factory=DeploymentOptions)
    discriminator: DeploymentOptions = Field(default_factory=DeploymentOptions)


class CacheBudgets(_Strict):
    base_models_per_replica: int = Field(default=2, ge=1, le=64, description="Pipelines a "
                                         "BaseModel replica keeps loaded (multiplexing capacity).")
    controlnets_per_replica: int = Field(default=4, ge=1, le=64)
    lora_slots: int = Field(default=3, ge=1, le=16, description="LoRAs a pipeline keeps on its "
                            "device (merge: the LoRA bank's places; slots: pre-allocated hotswap "
                            "slots), and the most LoRAs one request may use.")
    lora_max_rank: int = Field(default=64, ge=1, le=1024, description="Largest LoRA rank accepted "
                               "(slots: every adapter is padded to it; merge: the bank's device "
                               "memory is counted at it).")
    lora_mode: Literal["merge", "slots"] = Field(
        default="merge", description="How a request's LoRAs reach its image. merge: added into "
        "the attention weights (left there for the next request with the same LoRAs; restored "
        "from pristine copies before any other), so the request computes what a base request "
        "computes (deployments/lora_bank.py). slots: computed by the active hotswap slots on "
        "every attention projection (+90-103% compute for one LoRA on an H200).")
    pipeline_loader: Literal["auto", "direct", "diffusers"] = Field(
        default="auto", description="How a base pipeline in a local folder is read. direct: each "
        "safetensors file read by several threads into its tensors on the device (through pinned "
        "staging on a GPU), the modules built empty and given those tensors (deployments/direct_load.py); a "
        "folder it cannot read falls back to diffusers. diffusers: `from_pretrained`. auto: "
        "direct on a GPU, diffusers on a CPU, where diffusers' memory-mapped read is faster (a "
        "real-size SD 1.5 in 0.14-0.18 s against 0.65 s on the 2-core development machine).")
    lora_store_bytes: int = Field(default=2 << 30, ge=1024, description="Host-memory budget "
                                  "of the LoRA store.")
    lora_store_policy: str = Field(default=DEFAULT_EVICTION, description="Eviction policy of the LoRA "
                                   "store, by name from the policy registry (`t2i trace policies`).")

    @field_validator("lora_store_policy")
    @classmethod
    def _online_policy(cls, value: str) -> str:
        from policies.eviction import EVICTION

        if value not in EVICTION:
            raise ValueError(f"unknown eviction policy {value!r}; registered: {EVICTION.names()}")
        if EVICTION.create(value).needs_future:
            raise ValueError(f"eviction policy {value!r} needs the future (offline only)")
        return value


_NAMED_POLICY = "a policy name from the registry (`t2i trace policies`)"


class AutoscalingControl(_Strict):
    """The custom BaseModel autoscaler (`policies.autoscaling` behind its `Guardrails`); the
    replica bounds are `deployments.base_model.autoscaling`."""

    policy: str = Field(default="ewma-headroom", description="Desired-replicas forecast, " + _NAMED_POLICY)
    policy_args: dict = Field(default_factory=dict, description="Keyword arguments of the policy.")
    upscale_delay_s: float = Field(default=10.0, ge=0)
    downscale_delay_s: float = Field(default=60.0, ge=0)
    hysteresis: float = Field(default=0.1, ge=0, lt=1)
    scale_down: str = Field(default="cache-aware", description="Which replica goes first on a "
                            "scale-down, " + _NAMED_POLICY)


class ControlConfig(_Strict):
    """The control plane: `coordinator` (the project's coordinator, replica cache, cache-aware
    router and autoscaler) or `ray-default` (Ray Serve's `serve.multiplexed` count-based LRU,
    power-of-two-choices router and queue-length autoscaler), one switch for the whole set."""

    policies: Literal["coordinator", "ray-default"] = Field(default="coordinator")
    gpu_budget_bytes: int | None = Field(
        default=None, ge=1 << 20, description="Device-memory budget of one BaseModel replica's "
        "model cache (pipelines and colocated ControlNets). Unset: 90% of the GPU's memory on "
        "CUDA, 2 GiB on a CPU replica.")
    host_budget_bytes: int = Field(
        default=2 << 30, ge=0, description="Host-memory tier under the GPU budget: an evicted "
        "pipeline's weights stay here, so its reload is a host-to-device copy. 0 turns it off.")
    adapter_host_bytes: int = Field(
        default=512 << 20, ge=0, description="Host-memory tier for LoRA adapters on each BaseModel "
        "replica: an adapter fetched from the LoRA store stays here, so its next use is a slot swap, "
        "not a fetch. Evicted by `eviction`. 0 turns it off.")
    eviction: str = Field(default=DEFAULT_EVICTION, description="Replica cache eviction, " + _NAMED_POLICY)
    eviction_args: dict = Field(default_factory=dict)
    routing: str = Field(default="least-expected-latency", description="Request router, " + _NAMED_POLICY)
    routing_args: dict = Field(default_factory=lambda: {"band_pools": False}, description="Router "
                               "arguments; band pools off as in the simulator's coordinator set (on, "
                               "they raised SLO violations there: simulator_policies.json).")
    popularity: str = Field(default="decayed", description=_NAMED_POLICY)
    popularity_args: dict = Field(default_factory=lambda: {"half_life_s": 600.0, "min_demand": 0.05})
    placement: str = Field(default="popularity-bands", description=_NAMED_POLICY)
    placement_args: dict = Field(default_factory=lambda: {"fuse_top": 0})
    prefetch: str = Field(default="ucb1", description="Warm-pipeline prefetch bandit, " + _NAMED_POLICY)
    prefetch_args: dict = Field(default_factory=dict)
    prefetch_interval_s: float = Field(default=600.0, gt=0, description="Least time between two "
                                       "bandit prefetch offers to one idle replica.")
    prefetch_reward_window_s: float = Field(default=1800.0, gt=0, description="How long a prefetched "
                                            "pipeline has to be used before it counts as wasted.")
    report_period_s: float = Field(default=1.0, gt=0, le=60, description="How often a replica "
                                   "reports to the coordinator and fetches its actions.")
    replan_period_s: float = Field(default=5.0, gt=0, description="Coordinator re-plan cadence.")
    load_ahead: bool = Field(default=True, description="A request that waits for the replica starts "
                             "loading the models it lacks while it waits, into room that models the "
                             "replica's other queued or running requests need are never evicted for "
                             "(Ray's serve.multiplexed loads before the replica's lock the same way). "
                             "False: a request loads only once it holds the replica.")
    load_ahead_from: AheadFrom = Field(
        default="auto", description="Which tiers a load ahead reads from (policies.load_ahead.ahead_tiers): "
        "host (only host-tier copies back to the device), host+remote (also fetches from remote "
        "storage, not local files), any; auto: host+remote on a GPU replica, any on a CPU one. On an "
        "H200 a page-cached file read beside a running generation slowed it x1.36-1.59, about what "
        "the load would save; a host-tier reload hid 66% of itself "
        "(benchmarks/results/load_overlap_h200*.json).")
    # Off by default: live on the 2-core demo (results/live_coordinator_500x2_seed2_u06_drain.json, two
    # repeats) it cost x1.08 and x1.41 the load-seconds of the mean rule at equal violations and p99:
    # seeing a heavy request's true wait, the router moved light pipelines off that replica more.
    per_model_compute: bool = Field(default=False, description="A replica's drain time (its routing "
                                    "stats' busy_s) counts each request at its own base model's mean "
                                    "compute per step, the running one less its elapsed time, as the "
                                    "simulator's replicas report it (policies.drain); routers read the same "
                                    "means (compute_per_step_s). False (default): the replica's mean compute "
                                    "per request times its queue length, and no per-model means published.")
    compute_slots: int = Field(default=0, ge=0, description="Under the coordinator: at most this many "
                               "BaseModel replicas on one machine run a pipeline at once (its cores, or 1 "
                               "for replicas sharing a GPU); a request finding them all taken waits, counted "
                               "as queueing (deployments/compute_slots.py). 0 (default): no limit, replicas "
                               "time-share the machine. Ray's defaults (policies: ray-default) ignore it.")
    autoscaling: AutoscalingControl = Field(default_factory=AutoscalingControl)

    def coordinator_args(self) -> dict:
        """The ``policies.coordination.Coordination`` arguments this section sets: what the live
        coordinator runs and what ``t2i parity`` simulates it with."""
        return {"popularity": self.popularity, "popularity_args": dict(self.popularity_args),
                "placement": self.placement, "placement_args": dict(self.placement_args),
                "prefetch": self.prefetch, "prefetch_args": dict(self.prefetch_args),
                # live, the re-plan period is the config's; the request count still re-plans early
                "replan_max_s": self.replan_period_s,
                # the simulator's 0.5 GB floor assumes datacenter GPUs; a replica's byte budget is
                # the config's, and the bandit only proposes what fits the free bytes anyway
                "min_free_bytes": 0.0,
                "prefetch_interval_s": self.prefetch_interval_s, "reward_window_s": self.prefetch_reward_window_s}

    @model_validator(mode="after")
    def _known_policies(self) -> "ControlConfig":
        from policies.autoscaling import AUTOSCALING, SCALE_DOWN
        from policies.bandit import PIPELINE_PREFETCH
        from policies.eviction import EVICTION
        from policies.placement import PLACEMENT
        from policies.popularity import POPULARITY
        from policies.routing import ROUTING

        checks = [("control.eviction", EVICTION, self.eviction), ("control.routing", ROUTING, self.routing),
                  ("control.popularity", POPULARITY, self.popularity),
                  ("control.placement", PLACEMENT, self.placement),
                  ("control.prefetch", PIPELINE_PREFETCH, self.prefetch),
                  ("control.autoscaling.policy", AUTOSCALING, self.autoscaling.policy),
                  ("control.autoscaling.scale_down", SCALE_DOWN, self.autoscaling.scale_down)]
        for where, registry, name in checks:
            if name not in registry:
                raise ValueError(f"{where}: unknown policy {name!r}; registered: {', '.join(registry.names())}")
        if EVICTION.create(self.eviction, **self.eviction_args).needs_future:
            raise ValueError(f"control.eviction: {self.eviction!r} needs the future (offline only)")
        return self


class CascadeConfig(_Strict):
    enabled: bool = Field(default=False, description="Run every request through the cascade "
                          "unless it sets `cascade: false`.")
    light: str | None = Field(default=None, description="Base-model id answering first.")
    heavy: str | None = Field(default=None, description="Base-model id for rejected queries.")
    discriminator: str | None = Field(default=None, description="Discriminator id.")
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="Light outputs scoring "
                             "below this are regenerated by the heavy model (with planner: fixed, "
                             "or control.policies: ray-default, always; with planner: demand, until "
                             "the planner has measurements).")
    planner: Literal["demand", "fixed"] = Field(default="demand", description="demand: the "
                                                "coordinator re-plans the deferred share and the "
                                                "replicas per stage from measured demand "
                                                "(policies.cascade_planner; needs control.policies: "
                                                "coordinator); fixed: `threshold` always.")
    planner_args: dict = Field(default_factory=dict, description="policies.cascade_planner."
                               "PlannerConfig fields (period_s, headroom, jump_ratio, ...).")
    planner_replicas: int | None = Field(default=None, ge=1, description="Replicas the planner "
                                         "may count as computing in parallel. Default: the BaseModel "
                                         "replicas reporting (max_replicas with autoscaling), one GPU "
                                         "each. On a CPU host where replicas share fewer cores than "
                                         "there are replicas, set the core count.")
    report_period_s: float = Field(default=1.0, gt=0, le=60, description="How often an ingress "
                                   "replica reports cascade arrivals and measurements to the planner "
                                   "and fetches its plan.")

    @field_validator("planner_args")
    @classmethod
    def _planner_args(cls, v: dict) -> dict:
        from policies.cascade_planner import PlannerConfig

        try:
            PlannerConfig(**v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cascade.planner_args: {exc}") from None
        return v


class Limits(_Strict):
    max_images_per_request: int = Field(default=4, ge=1, le=16)
    max_steps: int = Field(default=100, ge=1, le=500)
    max_guidance_scale: float = Field(default=30.0, gt=0)
    max_prompt_chars: int = Field(default=4000, ge=1)
    max_image_bytes: int = Field(default=8 << 20, ge=1024, description="Largest decoded "
                                 "ControlNet image upload.")
    max_loras_per_request: int = Field(default=3, ge=0, le=16)
    max_controlnets_per_request: int = Field(default=2, ge=0, le=4)
    max_body_bytes: int = Field(default=64 << 20, ge=4096, description="Largest request body, "
                                "refused (413) before it is parsed; must hold "
                                "max_controlnets_per_request base64 images of max_image_bytes.")
    max_image_pixels: int = Field(default=4096 * 4096, ge=64, description="Largest ControlNet "
                                  "image (width x height), checked from the image header before "
                                  "any pixel is decoded (decompression bombs); at least the "
                                  "largest size a base model serves.")
    max_inflight_requests: int = Field(
        default=32, ge=1, le=100_000, description="Image requests one ingress replica handles at "
        "once; one more is refused at once (503 with Retry-After) before any work is done. Below "
        "deployments.ingress.max_ongoing_requests.")
    request_timeout_s: float | None = Field(
        default=None, gt=0, le=3600, description="Deadline of a request, from its arrival at the "
        "ingress: work past it is dropped (504). A client may shorten it with the "
        "X-Request-Timeout header. Unset: 4 x slo.latency_s.")
    retry_after_s: int = Field(default=1, ge=1, le=3600, description="The Retry-After header "
                               "(seconds) of an overload 503, the ingress's and Ray's back-pressure.")


class SLOs(_Strict):
    latency_s: float = Field(default=30.0, gt=0, description="End-to-end latency objective.")


class SecurityConfig(_Strict):
    """Who may call the API. No keys configured: the API is open (the embedded default binds to
    127.0.0.1). The config holds only where keys live, never a key, so it can be logged."""

    api_keys_file: str | None = Field(
        default=None, description="File of API keys, one per line ('#' starts a comment). With "
        "any API key configured (here or in the T2I_API_KEYS environment variable, comma-"
        "separated), every /v1/* endpoint needs `Authorization: Bearer <key>`.")
    admin_keys_file: str | None = Field(
        default=None, description="File of admin keys, same format (also the T2I_ADMIN_KEYS "
        "environment variable). With admin keys configured, the admin endpoints "
        "(/v1/cache/pin, /v1/cache/unpin) need one; without, they need an API key whenever "
        "API keys are configured. An admin key is also accepted wherever an API key is.")


class ServeConfig(_Strict):
    """The whole service: where models live, how deployments scale, what requests may ask."""

    host: str = Field(default="127.0.0.1")
    port: int = Field(default=8000, ge=1, le=65535)
    app_name: str = Field(default="t2i")
    metrics_export_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of Ray's Prometheus metrics endpoint "
        "(`/metrics`, the t2i_* cache metrics among Ray's) when `t2i serve` starts a local Ray; "
        "unset: Ray picks one (t2i serve prints it). A joined cluster keeps its own.")
    model_root: str = Field(default="models/demo", description="Folder that relative model "
                            "paths resolve under; relative to the working directory.")
    default_base_model: str | None = Field(default=None, description="Used when a request names "
                                           "no model; defaults to the first base model.")
    controlnet_mode: Literal["colocated", "remote"] = Field(
        default="colocated", description="colocated: the BaseModel replica runs the ControlNet "
        "module (the ControlNet deployment preprocesses); remote: the ControlNet deployment "
        "computes residuals, called once per denoising step.")
    models: list[ModelEntry] = Field(min_length=1)
    deployments: Deployments = Field(default_factory=Deployments)
    cache: CacheBudgets = Field(default_factory=CacheBudgets)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    limits: Limits = Field(default_factory=Limits)
    slo: SLOs = Field(default_factory=SLOs)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @model_validator(mode="after")
    def _cross_field(self) -> "ServeConfig":
        seen: set[str] = set()
        for index, entry in enumerate(self.models):
            if entry.id in seen:
                raise ValueError(f"models[{index}].id: duplicate model id {entry.id!r}")
            seen.add(entry.id)
        bases = {m.id for m in self.models if m.kind == "base"}
        if not bases:
            raise ValueError("models: at least one entry with kind 'base' is required")
        if self.default_base_model is not None and self.default_base_model not in bases:
            raise ValueError(f"default_base_model: {self.default_base_model!r} is not a base model")
        for index, entry in enumerate(self.models):
            for base in entry.base_models:
                if base not in bases:
                    raise ValueError(f"models[{index}].base_models: {base!r} is not a base model")
        for field in ("light", "heavy"):
            value = getattr(self.cascade, field)
            if value is not None and value not in bases:
                raise ValueError(f"cascade.{field}: {value!r} is not a base model")
        discs = {m.id for m in self.models if m.kind == "discriminator"}
        if self.cascade.discriminator is not None and self.cascade.discriminator not in discs:
            raise ValueError(f"cascade.discriminator: {self.cascade.discriminator!r} is not a "
                             "discriminator")
        if self.cascade.enabled and None in (self.cascade.light, self.cascade.heavy,
                                             self.cascade.discriminator):
            raise ValueError("cascade.enabled needs cascade.light, cascade.heavy and "
                             "cascade.discriminator")
        if self.limits.max_loras_per_request > self.cache.lora_slots:
            raise ValueError("limits.max_loras_per_request must not exceed cache.lora_slots")
        limits = self.limits
        images_b64 = limits.max_controlnets_per_request * -(-limits.max_image_bytes * 4 // 3)
        if limits.max_body_bytes < images_b64 + 65536:
            raise ValueError(f"limits.max_body_bytes must hold limits.max_controlnets_per_request "
                             f"base64 images of limits.max_image_bytes and the rest of a request "
                             f"(at least {images_b64 + 65536})")
        if limits.max_inflight_requests >= self.deployments.ingress.max_ongoing_requests:
            raise ValueError(f"limits.max_inflight_requests ({limits.max_inflight_requests}) must be "
                             "below deployments.ingress.max_ongoing_requests "
                             f"({self.deployments.ingress.max_ongoing_requests}): health checks and "
                             "/v1/models need room while generation is at its limit")
        largest = max(w * h for m in self.models for w, h in map(parse_size, m.sizes))
        if limits.max_image_pixels < largest:
            raise ValueError(f"limits.max_image_pixels must be at least the largest size a model "
                             f"serves ({largest} pixels)")
        return self

    # -- lookups -----------------------------------------------------------------------------
    def entry(self, model_id: str) -> ModelEntry:
        for entry in self.models:
            if entry.id == model_id:
                return entry
        raise KeyError(model_id)

    def ids(self, kind: ModelKind) -> list[str]:
        return [m.id for m in self.models if m.kind == kind]

    def valid_ids_hint(self, kind: ModelKind) -> str:
        """What to say after an unknown id: the valid ids, or where to find them when there are
        more than a message should carry."""
        valid = self.ids(kind)
        if len(valid) <= LISTED_IDS:
            return f"choose one of {valid}"
        return f"choose one of the {len(valid)} listed by GET /v1/models"

    def base_model_id(self) -> str:
        return self.default_base_model or self.ids("base")[0]

    def models_document(self) -> dict:
        """``GET /v1/models``: the registry, plus what a client needs to build requests the
        service accepts (sizes and default steps per base model, the default base model, the
        limits, the SLO); the trace-replay driver maps trace ids onto it."""
        data = []
        for m in self.models:
            item = {"id": m.id, "object": "model", "owned_by": "t2i", "kind": m.kind,
                    "base_models": m.base_models}
            if m.kind == "base":
                item.update(sizes=m.sizes, default_steps=m.default_steps)
            data.append(item)
        limits = self.limits
        return {"object": "list", "data": data,
                "t2i": {"default_base_model": self.base_model_id(),
                        "limits": {k: getattr(limits, k) for k in (
                            "max_images_per_request", "max_steps", "max_loras_per_request",
                            "max_controlnets_per_request")},
                        "slo_s": self.slo.latency_s}}

    def resolve_source(self, entry: ModelEntry) -> str:
        """Absolute local path for `entry`, or its hub id when it has no path."""
        if entry.path:
            path = Path(entry.path)
            if not path.is_absolute():
                path = Path(self.model_root) / path
            return str(path.resolve())
        assert entry.hub_id is not None
        return entry.hub_id

    def request_timeout_s(self) -> float:
        """The default deadline of a request (`limits.request_timeout_s`, else 4 x the SLO)."""
        return self.limits.request_timeout_s or 4 * self.slo.latency_s

    def cascade_ready(self) -> bool:
        return None not in (self.cascade.light, self.cascade.heavy, self.cascade.discriminator)

    def cascade_planned(self) -> bool:
        """Whether the coordinator's demand planner sets the cascade's threshold and stages (it
        runs in the coordinator, so only under control.policies: coordinator)."""
        return (self.cascade_ready() and self.cascade.planner == "demand"
                and self.control.policies == "coordinator")


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> ServeConfig:
    """Read YAML at `path` into a ServeConfig; `model_root` becomes absolute (relative to cwd).

    Raises ConfigError whose message lists each invalid field by its dotted location.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {str(path)!r} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    raw.update(overrides or {})
    config = parse_config(raw, source=str(path))
    root = Path(config.model_root)
    if not root.is_absolute():
        config = config.model_copy(update={"model_root": str(root.resolve())})
    return config


def parse_config(raw: dict, source: str = "<config>") -> ServeConfig:
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            lines.append(f"  {where}: {error['msg']}")
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(lines)) from None
