"""Typed configuration of a simulated cluster and of the costs it charges.

Pydantic, like the app's config, so the live app can load the same policy-set file later; every
field has bounds and a description, and cross-field errors name the fields.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
                            "distributions per component kind, or size over the tier bandwidths")
    replica_startup_s: float = Field(10.0, ge=0, description="delay before a scaled-up replica serves")


class ComponentSpec(BaseModel):
    """Sizes of components (uniform in a range per kind, seeded) and loads when no data is present."""

    model_config = ConfigDict(extra="forbid")

    base_gb: tuple[float, float] = Field((2.0, 7.0), description="base-model size range, GB")
    lora_gb: tuple[float, float] = Field((0.1, 1.0), description="LoRA size range, GB")
    controlnet_gb: tuple[float, float] = Field((0.5, 2.5), description="ControlNet size range, GB")
    # Fallback remote-load means (s) from the GenTD26 findings (base refresh 22.6 s, LoRA 4.6 s,
    # ControlNet 5.1 s) used as exponential means when ../shared/data is absent.
    base_load_s: float = Field(22.6, gt=0)
    lora_load_s: float = Field(4.6, gt=0)
    controlnet_load_s: float = Field(5.1, gt=0)

    @model_validator(mode="after")
    def _ranges(self) -> ComponentSpec:
        for name in ("base_gb", "lora_gb", "controlnet_gb"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}: need 0 < low <= high, got ({lo}, {hi})")
        return self


class InferenceSpec(BaseModel):
    """Service time from a profile: runtime at a reference point scaled by steps, pixels, adapters.

    The default reference is DiffServe's SD1.5 profile (1.78 s for batch 1 at 50 steps, 512x512 on
    an Ampere GPU); ``images`` uses the profile's batch curve when one is loaded.
    """

    model_config = ConfigDict(extra="forbid")

    ref_runtime_s: float = Field(1.78, gt=0, description="batch-1 runtime at the reference point")
    ref_steps: int = Field(50, ge=1)
    ref_pixels: int = Field(512 * 512, ge=1)
    default_steps: int = Field(30, ge=1, description="steps when the trace does not say")
    default_pixels: int = Field(512 * 512, ge=1, description="resolution when the trace does not say")
    controlnet_overhead: float = Field(0.3, ge=0, description="extra runtime per ControlNet (fraction)")
    lora_overhead: float = Field(0.05, ge=0, description="extra runtime per unfused LoRA (fraction)")
    jitter_cv: float = Field(0.1, ge=0, le=2, description="lognormal noise, coefficient of variation")
    use_trace_exec: bool = Field(False, description="use the trace's exec seconds where known")


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
