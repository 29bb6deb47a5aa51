"""Plain data that crosses deployments: a resolved request and its result (no torch here, so the
ingress and the simulator can import it without the model stack)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class GenerationSpec:
    """One resolved request for one base model (crosses Ray, so plain data only)."""

    prompt: str
    base_model: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    n: int = 1
    negative_prompt: str | None = None
    loras: tuple[tuple[str, float], ...] = ()
    controlnets: tuple[tuple[str, float], ...] = ()
    # absolute wall-clock time (time.time()) after which the work is dropped; None: no deadline
    deadline: float | None = None

    @property
    def compute_units(self) -> int:
        """Steps x images: what the request's inference time scales with for one base model
        (replicas keep their running means of compute per unit)."""
        return max(self.steps, 1) * max(self.n, 1)


@dataclass
class GenerationResult:
    images: list[np.ndarray]  # uint8 HxWx3
    timings: dict[str, float] = field(default_factory=dict)
    adapters_swapped: int = 0
    replica: str | None = None  # the BaseModel replica's Serve id; None outside Serve
