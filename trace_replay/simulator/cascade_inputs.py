"""DiffServe's SD-Turbo -> SD 1.5 cascade data, as allocation inputs and per-query confidences.

One place builds what both the cascade simulator and `benchmarks/cascade_milp.py` need from
`../shared/data/diffserve` (read through `trace_replay.formats.diffserve`):
- stage profiles: `onnxruntime_gpu_ampere` rows of the runtime CSV (DiffServe's testbed GPUs were
  A100s); the data holds no discriminator profile, so the light stage is generation only unless a
  per-image discriminator cost is given (then folded in with `fold_discriminator`);
- f(t) from `f_t_sdturbo_sdv15.csv`, the SLO from the app JSON;
- the light model's per-prompt confidence from `confidence_scores.csv`.

Calibration: the recorded f(t) and the confidence file are on different scales (no prompt of the
5,000 scores below 0.45, yet f(0.05) = 0.36), so a threshold t is applied to a query as the
confidence cutoff that defers the fraction f(t) of the prompt population: the f(t)-quantile of
the 5,000 light confidences (`confidence_cutoff`). Queries still defer by their own confidence.

FID: DiffServe's published points for SD-Turbo -> SD 1.5 (18.55 all-heavy, 16.79 at 40% light,
22.77 all-light), piecewise-linear in the share answered by the light model (`fid_estimate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.cascade_allocation import CascadeInputs, StageProfile, fold_discriminator
from policies.cascade_baselines import quality_from_confidence

ACCEL = "onnxruntime_gpu_ampere"
APP = "sdturbo_sdv15"
FID_LIGHT_SHARE = np.array([0.0, 0.4, 1.0])  # share answered by the light model
FID_POINTS = np.array([18.55, 16.79, 22.77])  # DiffServe's published FID at those shares
CONTROLLER_GRID = 201  # thresholds DiffServe's controller chooses from (f(t) linear between records)


def fid_estimate(light_share: float | np.ndarray) -> float | np.ndarray:
    """FID interpolated piecewise-linearly from DiffServe's three published points."""
    share = np.asarray(light_share, dtype=np.float64)
    if np.any((share < 0) | (share > 1)):
        raise ValueError(f"light share must lie in [0, 1]; got {light_share}")
    out = np.interp(share, FID_LIGHT_SHARE, FID_POINTS)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class DiffServeCascade:
    """The SD-Turbo -> SD 1.5 cascade as recorded by DiffServe."""

    slo_s: float
    light: StageProfile  # discriminator folded in when a cost was given
    heavy: StageProfile
    thresholds: np.ndarray
    deferred: np.ndarray  # f(t)
    confidence: np.ndarray  # light-model confidence by prompt index (NaN where the file has none)

    def quality(self, kind: str) -> np.ndarray:
        """quality(t) for the MILP: "threshold" (DiffServe: maximise t), "confidence" (the
        confidence proxy of `quality_from_confidence`) or "fid" (-FID at light share 1 - f(t))."""
        if kind == "threshold":
            return np.asarray(self.thresholds, dtype=np.float64).copy()
        if kind == "confidence":
            return quality_from_confidence(self.deferred, self.confidence[np.isfinite(self.confidence)])
        if kind == "fid":
            return -np.asarray(fid_estimate(1.0 - self.deferred))
        raise ValueError(f"unknown quality kind {kind!r}; kinds: threshold, confidence, fid")

    def inputs(self, demand_qps: float, gpus: int, quality: str = "confidence") -> CascadeInputs:
        return CascadeInputs(float(demand_qps), int(gpus), self.slo_s, self.light, self.heavy,
                             self.thresholds, self.deferred, self.quality(quality))

    def confidence_cutoff(self, deferred_fraction: float) -> float:
        """Queries whose light confidence is below this are deferred: the cutoff deferring
        `deferred_fraction` of the prompt population (-inf defers none, +inf all)."""
        if deferred_fraction <= 0:
            return -np.inf
        if deferred_fraction >= 1:
            return np.inf
        known = np.sort(self.confidence[np.isfinite(self.confidence)])
        # the k-th lowest score (k = round(f N)) is the first one kept: exactly k prompts fall below
        k = int(round(deferred_fraction * known.size))
        return float(known[k]) if k < known.size else np.inf

    def prompt_confidence(self, prompts: np.ndarray) -> np.ndarray:
        """Light confidence of each query's prompt; names the first prompt index with no score."""
        prompts = np.asarray(prompts, dtype=np.int64)
        bad = (prompts < 0) | (prompts >= self.confidence.size)
        if not bad.any():
            conf = self.confidence[prompts]
            bad = ~np.isfinite(conf)
        if bad.any():
            raise ValueError(f"prompt index {int(prompts[np.flatnonzero(bad)[0]])} has no confidence score "
                             f"(confidence_scores.csv covers content_id 1..{self.confidence.size - 1})")
        return conf


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"DiffServe data file not found: {path}")
    return path


def load_diffserve_cascade(data_dir: str | Path, grid: int | None = None,
                           discriminator_s_per_image: float = 0.0) -> DiffServeCascade:
    """Read the SD-Turbo -> SD 1.5 app from a DiffServe data folder (`--diffserve-dir`).

    grid: resample f(t) on this many evenly spaced thresholds (DiffServe's controller uses 201);
    None keeps the 21 recorded points."""
    from trace_replay.formats.diffserve import load_app, load_confidence, load_f_t, load_profiles

    data = Path(data_dir)
    if not data.is_dir():
        raise FileNotFoundError(f"DiffServe data folder not found: {data}")
    app = load_app(_need(data / f"traces/apps/{APP}/{APP}.json"))
    light_name, heavy_name = app.chain
    profiles = {p.model: p for p in load_profiles(_need(data / "profiling/stable_diffusion_runtimes_sdturbo.csv"))
                if p.accel == ACCEL}
    missing = [m for m in (light_name, heavy_name) if m not in profiles]
    if missing:
        raise ValueError(f"no {ACCEL} runtime profile for {missing} in {data / 'profiling'}")
    stage = {m: StageProfile(p.batch, p.avg_ms / 1000.0) for m, p in profiles.items()}
    light = stage[light_name]
    if discriminator_s_per_image > 0:
        light = fold_discriminator(light, StageProfile(light.batch, light.batch * discriminator_s_per_image))
    t, f = load_f_t(_need(data / f"traces/apps/{APP}/f_t_{APP}.csv"))
    if grid:
        t_new = np.linspace(t[0], t[-1], grid)
        t, f = t_new, np.interp(t_new, t, f)
    scores = load_confidence(_need(data / f"traces/maf/{APP}/confidence_scores/confidence_scores.csv"))
    conf = np.full(int(scores.content_id.max()) + 1, np.nan)
    conf[scores.content_id] = scores.scores[light_name]
    return DiffServeCascade(app.slo_s, light, stage[heavy_name], t, f, conf)


def diffserve_inputs(data: Path, grid: int | None = None,
                     quality: str = "confidence") -> Callable[[float, int], CascadeInputs]:
    """(demand_qps, gpus) -> CascadeInputs for the SD-Turbo -> SD 1.5 app."""
    cascade = load_diffserve_cascade(data, grid)
    return lambda demand, gpus: cascade.inputs(demand, gpus, quality)
