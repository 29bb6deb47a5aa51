"""Typed configuration of a simulated cluster and of the costs it charges.

Pydantic, like the app's config, so a later live coordinator can load the same file; every field
has bounds and a description, and cross-field errors name the fields.

Measured figures quoted below come from ``../shared/data/gpu/h200_sd_profile.json``: this
project's own measurement of its engine on one NVIDIA H200 (2026-11-26; see that folder's README).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GB = 1e9


class ClusterSpec(BaseModel):
    """N identical GPU workers and the tiered store (remote -> local disk -> host -> GPU)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(4, ge=1, le=100_000, description="GPU workers (one replica each)")
    gpu_model_gb: float = Field(18.0, gt=0, description="GPU memory for model weights per worker "
                                "(a 24 GB card minus activation headroom)")
    host_gb: float = Field(32.0, ge=0, description="host-memory tier per worker; 0 disables it")
    disk_gb: float = Field(256.0, ge=0, description="local-disk tier per worker; 0 disables it")
    pcie_gbps: float = Field(12.0, gt=0, description="host -> GPU bandwidth, GB/s")
    disk_gbps: float = Field(2.0, gt=0, description="local disk -> host bandwidth, GB/s")
    remote_gbps: float = Field(1.0, gt=0, description="remote store -> GPU bandwidth, GB/s, of a cold "
                               "load when load_model='bandwidth' (deterministic: tests, what-ifs)")
    load_model: str = Field("gentd26", pattern="^(gentd26|bandwidth)$",
                            description="remote loads: sampled from the GenTD26 load-latency "
                            "distributions per component kind (end to end, overhead included), or "
                            "reload_overhead_s + size / remote_gbps")
    replica_startup_s: float = Field(10.0, ge=0, description="delay before a scaled-up replica serves")
    replicas_per_host: int = Field(1, ge=1, description="replicas sharing one host's processors (a GPU "
                                   "cluster: 1, one replica per GPU; the CPU demo: every replica)")
    host_contention: float = Field(0.0, ge=0, description="extra duration of a job per other busy "
                                   "replica on its host when it starts, as a fraction: replicas that "
                                   "share processors slow each other down (t2i profile measures it; "
                                   "0 = none)")
    contention_model: Literal["at-start", "shared"] = Field(
        "shared", description="how host_contention stretches a job: 'at-start', by the busy "
        "neighbours when it starts, fixed from then on; 'shared', by the busy neighbours at every "
        "moment (a job slows when a neighbour starts and speeds up when one finishes)")
    host_stretch: list[float] = Field(
        default_factory=list, description="measured instead of linear: how many times as long a job "
        "takes while 2, 3, ... replicas of its host are busy (itself included), one value per count "
        "up to replicas_per_host (t2i profile measures it); empty = 1 + host_contention x (busy - 1)")

    compute_slots: int = Field(0, ge=0, description="at most this many requests run at once per host "
                               "(control.compute_slots live: deployments/compute_slots.py); a replica whose "
                               "request finds them all taken waits, first come first served on its host. "
                               "0 = no limit (the replicas time-share the host)")

    @model_validator(mode="after")
    def _stretch_per_busy_count(self) -> ClusterSpec:
        s = self.host_stretch
        if s and len(s) != self.replicas_per_host - 1:
            raise ValueError(f"host_stretch needs one value per busy count 2..{self.replicas_per_host} "
                             f"(replicas_per_host - 1 = {self.replicas_per_host - 1} values), got {len(s)}")
        if any(not (0 < x < 1000) for x in s):
            raise ValueError(f"host_stretch values must be in (0, 1000) (times as long), got {s}")
        return self

    def stretch_by_busy(self) -> list[float]:
        """How many times as long a job takes with m of its host's replicas busy, indexed by m
        (0 and 1: 1.0), up to replicas_per_host: the measured host_stretch, else linear."""
        return [1.0, 1.0, *(self.host_stretch or
                            [1.0 + self.host_contention * (m - 1) for m in range(2, self.replicas_per_host + 1)])]


class ReloadOverhead(BaseModel):
    """Seconds a load pays besides moving bytes (pipeline construction, ``.to(device)``, LoRA
    patching), per component kind: added to size / bandwidth on every load from host memory or
    local disk, and to a remote load with ``load_model='bandwidth'`` (GenTD26's sampled remote
    loads are end to end and already include it)."""

    model_config = ConfigDict(extra="forbid")

    base_model: float = Field(1.15, ge=0, description="H200 profile: engine warm load_pipeline 1.38 s "
                              "(of which 0.72 s LoRA-slot allocation) minus the 2.13 GB SD 1.5 copy at "
                              "pageable 9.3 GB/s (0.23 s); 1.34 s if the copy ran pinned (55 GB/s)")
    controlnet: float = Field(0.15, ge=0, description="H200 profile: ControlNet load 0.18 s for 0.72 GB "
                              "minus its copy (0.013 s pinned to 0.077 s pageable)")
    lora: float = Field(0.03, ge=0, description="H200 profile: project hotswap LoraSlots.activate 29 ms "
                        "(the naive load_lora_weights + set_adapters switch is 158 ms)")
    lora_swap: float | None = Field(None, ge=0, description="A LoRA's reload from a worker's host "
                                    "tier: the slot swap alone (a coordinated replica keeps fetched "
                                    "adapters prepared in host memory, deployments/adapter_tier.py); "
                                    "`t2i profile` measures it. None: the same as `lora`")


class ComponentSpec(BaseModel):
    """Sizes of components (uniform in a range per kind, seeded, or exact by name), reload
    overheads, and remote loads when no data is present."""

    model_config = ConfigDict(extra="forbid")

    base_gb: tuple[float, float] = Field((2.0, 7.0), description="base-model size range, GB")
    lora_gb: tuple[float, float] = Field((0.1, 1.0), description="LoRA size range, GB")
    controlnet_gb: tuple[float, float] = Field((0.5, 2.5), description="ControlNet size range, GB")
    sizes_gb: dict[str, float] = Field(default_factory=dict, description="exact size in GB of a "
                                       "component by its name in the trace (base model, ControlNet or "
                                       "LoRA id); overrides the random range for those names")
    reload_overhead_s: ReloadOverhead = Field(default_factory=ReloadOverhead, description="per-load "
                                              "overhead by kind (base_model, controlnet, lora), seconds")
    # Fallback remote-load means (s) from the GenTD26 findings (base refresh 22.6 s, LoRA 4.6 s,
    # ControlNet 5.1 s) used as exponential means when ../shared/data is absent.
    base_load_s: float = Field(22.6, gt=0)
    lora_load_s: float = Field(4.6, gt=0)
    controlnet_load_s: float = Field(5.1, gt=0)

    @field_validator("sizes_gb")
    @classmethod
    def _sizes(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: s for k, s in v.items() if not (math.isfinite(s) and s > 0)}
        if bad:
            raise ValueError(f"sizes must be finite and > 0 GB, got {bad}")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> ComponentSpec:
        for name in ("base_gb", "lora_gb", "controlnet_gb"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}: need 0 < low <= high, got ({lo}, {hi})")
        return self


_SD15_PIXELS = 512 * 512
# Named service-time profiles: the reference fields each sets (unless given explicitly).
PROFILES: dict[str, dict[str, float | int]] = {
    # DiffServe's SD1.5 profile on an Ampere GPU: 1.78 s at 50 steps, 512x512, batch 1; 3.68 s at
    # batch 4 (images^0.85). The default, so that recorded results stay comparable.
    "diffserve-sd15": dict(ref_runtime_s=1.78, ref_steps=50, ref_pixels=_SD15_PIXELS,
                           default_pixels=_SD15_PIXELS, controlnet_overhead=0.3, lora_overhead=0.05,
                           batch_exponent=0.85),
    # H200 profile, SD 1.5 512x512, 25 steps, CFG 7.5: n=1 0.6587 s (26.35 ms/step), n=4 1.6248 s
    # (exponent log(1.6248 / 0.6587) / log 4 = 0.651); one ControlNet 1.5095 s vs 0.6295 s base
    # (+140%); one unfused LoRA 0.8787 s vs 0.6318 s plain (+39%; the project's slots: +50% with
    # only its slot active, +103% with 3 slots active).
    "h200-sd15": dict(ref_runtime_s=0.6587, ref_steps=25, ref_pixels=_SD15_PIXELS,
                      default_pixels=_SD15_PIXELS, controlnet_overhead=1.40, lora_overhead=0.39,
                      batch_exponent=0.651),
    # H200 profile, SDXL 1024x1024, 25 steps, n=1: 1.585 s (63.4 ms/step). ControlNet, LoRA and
    # batch figures were measured on SD 1.5 only and are reused.
    "h200-sdxl": dict(ref_runtime_s=1.585, ref_steps=25, ref_pixels=1024 * 1024,
                      default_pixels=1024 * 1024, controlnet_overhead=1.40, lora_overhead=0.39,
                      batch_exponent=0.651),
}


class ModelProfile(BaseModel):
    """Service time of one base model: fixed_s + s_per_step x steps x pixels / ref_pixels, times
    the batch curve and the ControlNet and LoRA factors of the inference section."""

    model_config = ConfigDict(extra="forbid")

    s_per_step: float = Field(..., gt=0, description="seconds per denoising step at ref_pixels, one image")
    fixed_s: float | None = Field(None, ge=0, description="per-request constant for this model (text "
                                  "encoder, VAE, hops); None: inference.fixed_s")
    ref_pixels: int = Field(_SD15_PIXELS, ge=1, description="resolution s_per_step was measured at")


class InferenceSpec(BaseModel):
    """Service time from a named profile: runtime at a reference point scaled by steps, pixels,
    images (the profile's batch curve) and adapters, plus a constant, with lognormal jitter.

    ``profile`` sets the reference fields (``PROFILES``) that are not given explicitly. A base
    model named in ``per_model`` uses its own per-step formula instead of the reference runtime.
    """

    model_config = ConfigDict(extra="forbid")

    profile: Literal["diffserve-sd15", "h200-sd15", "h200-sdxl"] = Field(
        "diffserve-sd15", description="named service-time profile: DiffServe's SD1.5 (Ampere, default) "
        "or this project's H200 measurements (SD 1.5 512x512, SDXL 1024x1024)")
    ref_runtime_s: float = Field(1.78, gt=0, description="batch-1 runtime at the reference point")
    ref_steps: int = Field(50, ge=1)
    ref_pixels: int = Field(_SD15_PIXELS, ge=1)
    default_steps: int = Field(30, ge=1, description="steps when the trace does not say")
    default_pixels: int = Field(_SD15_PIXELS, ge=1, description="resolution when the trace does not say "
                                "(every request, while the trace tables carry no size column)")
    batch_exponent: float = Field(0.85, gt=0, le=1, description="a request for n images costs n^this "
                                  "of one (DiffServe 0.85; H200 SD 1.5 0.651)")
    controlnet_overhead: float = Field(0.3, ge=0, description="extra runtime per ControlNet (fraction)")
    lora_overhead: float = Field(0.05, ge=0, description="extra runtime per unfused LoRA (fraction)")
    fixed_s: float = Field(0.0, ge=0, description="per-request constant added to every service time "
                           "(HTTP/Serve hops, text encoder, VAE, PNG encoding)")
    per_model: dict[str, ModelProfile] = Field(default_factory=dict, description="by base-model name "
                                               "as in the trace: that model's own per-step profile")
    jitter_cv: float = Field(0.1, ge=0, le=2, description="lognormal noise, coefficient of variation")
    use_trace_exec: bool = Field(False, description="use the trace's exec seconds where known")
    exec_expected: Literal["learnt", "profile"] = Field(
        "learnt", description="with use_trace_exec, what decisions expect such a request to take: the "
        "mean of the requests completed so far (learnt), or this section's formula (profile: what a live "
        "service's router is told, for replaying measured service seconds under the same decisions)")

    @model_validator(mode="after")
    def _apply_profile(self) -> InferenceSpec:
        for name, value in PROFILES[self.profile].items():
            if name not in self.model_fields_set:
                object.__setattr__(self, name, value)  # not marked as set: it came from the profile
        return self


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    components: ComponentSpec = Field(default_factory=ComponentSpec)
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    slo_s: float = Field(60.0, gt=0, description="latency SLO per request (arrival to completion)")
    seed: int = Field(0, description="seeds sizes, load and service-time samples and policy randomness")
    time_scale: float = Field(1.0, gt=0, description="arrival times are divided by this (compress a "
                              "20-day trace into a busier one)")
    queue_sample_s: float = Field(60.0, gt=0, description="grid of the queue-length-over-time series")
