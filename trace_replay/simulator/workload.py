"""A RequestTable turned into what the event loop needs, all sampled up front with one seed.

Why up front: the loop must cost ~20 us per request, so service times, component sizes and the
streams of load-time samples are drawn here in vectorised batches from one seeded Generator;
the loop only indexes. Component keys share one space: base models [0, nb] (nb = "no base model
named", the default pipeline), then ControlNets, then LoRAs. Kind codes follow
``policies.eviction.CacheView.kind``: 0 ControlNet, 1 LoRA, and 2 for a base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trace_replay.simulator.config import GB, SimConfig
from trace_replay.table import CONTROLNET, RequestTable

BASE = 2  # CacheView kind code of a base model (0 and 1 are ControlNet and LoRA)
KIND_NAMES = {CONTROLNET: "controlnet", 1: "lora", BASE: "base_model"}
_GENTD26_KIND = {BASE: "base_model", CONTROLNET: "controlnet", 1: "lora"}


@dataclass
class Workload:
    arrival: np.ndarray  # float64 seconds, sorted, starting at the first arrival
    comp_offsets: np.ndarray  # int64 CSR over comp_key, len n + 1
    comp_key: np.ndarray  # int64 component keys: base model first, then adapters in trace order
    infer_s: np.ndarray  # float64 service time per request (compute only)
    base: np.ndarray  # int64 base-model key per request
    key_kind: np.ndarray  # int8 per key
    key_size: np.ndarray  # float64 bytes per key
    key_names: list[str]
    load_pool: dict[int, np.ndarray]  # kind -> remote-load seconds, consumed in order (cycled)
    mean_load_s: dict[int, float]  # kind -> mean of the remote-load distribution (what a policy plans with)
    n_base: int
    t0: float  # the original time of the first arrival
    # What a live system could know of a request's compute before it runs: the profile's mean
    # (the formula without jitter). NaN where the service time is the trace's exec seconds, whose
    # expectation is learnt from completed requests as the run goes (engine.py).
    expect_infer_s: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.arrival.shape[0])

    @property
    def n_keys(self) -> int:
        return int(self.key_kind.shape[0])


def _latency_pools(cfg: SimConfig, rng: np.random.Generator, size: int,
                   data_dir: Path | None) -> tuple[dict[int, np.ndarray], dict[int, float], str]:
    """Remote-load samples per kind and the mean of the distribution they are drawn from (not of
    the samples: a policy may know the distribution, not the draws): GenTD26 empirical
    distributions, else exponential means."""
    comp = cfg.components
    fallback = {BASE: comp.base_load_s, CONTROLNET: comp.controlnet_load_s, 1: comp.lora_load_s}
    dists = {}
    if data_dir is not None and data_dir.exists():
        from trace_replay.formats.gentd26 import load_component_latencies

        try:
            dists = load_component_latencies(data_dir)
        except FileNotFoundError:
            dists = {}
    pools, means, source = {}, {}, "gentd26" if dists else "exponential-fallback"
    for kind, name in _GENTD26_KIND.items():
        if name in dists:
            vals = dists[name].values_s
            vals = vals[vals > 0]  # zero samples are "already resident", not a remote load
            pools[kind] = rng.choice(vals, size=size)
            means[kind] = float(vals.mean())
        else:
            pools[kind] = rng.exponential(fallback[kind], size=size)
            means[kind] = float(fallback[kind])
    return pools, means, source


def build_workload(table: RequestTable, cfg: SimConfig, data_dir: Path | None = None,
                   pool_size: int = 1 << 16) -> tuple[Workload, list[str]]:
    """Workload arrays plus notes (what was assumed) for the report."""
    rng = np.random.default_rng(cfg.seed)
    t = table.sorted_by_time()
    n = len(t)
    notes: list[str] = []
    nb = len(t.base_models)
    n_cn = len(t.controlnet_ids)
    base = np.where(t.base_model < 0, nb, t.base_model).astype(np.int64)
    ad_key = np.where(t.adapter_kind == CONTROLNET, nb + 1 + t.adapter_id,
                      nb + 1 + n_cn + t.adapter_id).astype(np.int64)
    per_req = np.diff(t.adapter_offsets) + 1
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_req, out=offsets[1:])
    keys = np.empty(int(offsets[-1]), dtype=np.int64)
    keys[offsets[:-1]] = base
    is_ad = np.ones(keys.size, dtype=bool)
    is_ad[offsets[:-1]] = False
    keys[is_ad] = ad_key

    n_keys = nb + 1 + n_cn + len(t.lora_ids)
    kind = np.empty(n_keys, dtype=np.int8)
    kind[: nb + 1] = BASE
    kind[nb + 1: nb + 1 + n_cn] = CONTROLNET
    kind[nb + 1 + n_cn:] = 1
    comp = cfg.components
    lo = np.select([kind == BASE, kind == CONTROLNET], [comp.base_gb[0], comp.controlnet_gb[0]], comp.lora_gb[0])
    hi = np.select([kind == BASE, kind == CONTROLNET], [comp.base_gb[1], comp.controlnet_gb[1]], comp.lora_gb[1])
    size = (lo + (hi - lo) * rng.random(n_keys)) * GB
    names = list(t.base_models) + ["<default-base>"] + list(t.controlnet_ids) + list(t.lora_ids)
    if comp.sizes_gb:
        index = {name: j for j, name in enumerate(names)}
        hit = [name for name in comp.sizes_gb if name in index]
        for name in hit:
            size[index[name]] = comp.sizes_gb[name] * GB
        notes.append(f"component sizes: {len(hit)} of {len(comp.sizes_gb)} components.sizes_gb names "
                     "found in the trace")

    expect = expected_infer_s(t, cfg, base)
    infer = expect.copy()
    inf = cfg.inference
    if inf.jitter_cv > 0:
        sigma = np.sqrt(np.log1p(inf.jitter_cv ** 2))
        infer *= rng.lognormal(-sigma * sigma / 2, sigma, size=n)
    if inf.use_trace_exec:
        known = np.isfinite(t.exec_s) & (t.exec_s > 0)
        infer[known] = t.exec_s[known]
        if inf.exec_expected == "learnt":
            expect[known] = np.nan  # learnt from completed requests (engine.py)
        notes.append(f"service time: trace exec seconds for {int(known.sum())} of {n} requests")
    pools, means, source = _latency_pools(cfg, rng, pool_size, data_dir)
    notes.append(f"remote load times: {source}")
    arrival = (t.time - (t.time[0] if n else 0.0)) / cfg.time_scale
    return Workload(arrival, offsets, keys, infer, base, kind, size, names, pools, means,
                    nb + 1, float(t.time[0]) if n else 0.0, expect), notes


def expected_infer_s(t: RequestTable, cfg: SimConfig, base: np.ndarray) -> np.ndarray:
    """Mean service time per request under the configured profile (no jitter).

    Global: fixed_s + ref_runtime_s x (steps / ref_steps) x (pixels / ref_pixels) x images^b x
    (1 + controlnet_overhead x ControlNets) x (1 + lora_overhead x LoRAs). A base model in
    ``per_model``: fixed_s_m + s_per_step_m x steps x (pixels / ref_pixels_m) x the same factors.
    Pixels are ``default_pixels``: the request tables carry no size column.
    """
    inf = cfg.inference
    n = len(t)
    steps = np.where(t.steps > 0, t.steps, inf.default_steps).astype(np.float64)
    images = np.where(t.images > 0, t.images, 1).astype(np.float64)
    pixels = np.full(n, float(inf.default_pixels))
    factors = (images ** inf.batch_exponent * (1 + inf.controlnet_overhead * t.n_controlnets.astype(np.float64))
               * (1 + inf.lora_overhead * t.n_loras.astype(np.float64)))
    out = inf.fixed_s + inf.ref_runtime_s * (steps / inf.ref_steps) * (pixels / inf.ref_pixels) * factors
    for name, m in inf.per_model.items():
        if name not in t.base_models:
            continue
        sel = base == list(t.base_models).index(name)
        fixed = inf.fixed_s if m.fixed_s is None else m.fixed_s
        out[sel] = fixed + m.s_per_step * steps[sel] * (pixels[sel] / m.ref_pixels) * factors[sel]
    return out
