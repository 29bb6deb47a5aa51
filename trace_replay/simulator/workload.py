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
    mean_load_s: dict[int, float]  # kind -> mean remote load, the cost a policy may plan with
    n_base: int
    t0: float  # the original time of the first arrival

    def __len__(self) -> int:
        return int(self.arrival.shape[0])

    @property
    def n_keys(self) -> int:
        return int(self.key_kind.shape[0])


def _latency_pools(cfg: SimConfig, rng: np.random.Generator, size: int,
                   data_dir: Path | None) -> tuple[dict[int, np.ndarray], str]:
    """Remote-load samples per kind: GenTD26 empirical distributions, else exponential means."""
    comp = cfg.components
    fallback = {BASE: comp.base_load_s, CONTROLNET: comp.controlnet_load_s, 1: comp.lora_load_s}
    dists = {}
    if data_dir is not None and data_dir.exists():
        from trace_replay.formats.gentd26 import load_component_latencies

        try:
            dists = load_component_latencies(data_dir)
        except FileNotFoundError:
            dists = {}
    pools, source = {}, "gentd26" if dists else "exponential-fallback"
    for kind, name in _GENTD26_KIND.items():
        if name in dists:
            vals = dists[name].values_s
            vals = vals[vals > 0]  # zero samples are "already resident", not a remote load
            pools[kind] = rng.choice(vals, size=size)
        else:
            pools[kind] = rng.exponential(fallback[kind], size=size)
    return pools, source


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

    inf = cfg.inference
    steps = np.where(t.steps > 0, t.steps, inf.default_steps).astype(np.float64)
    images = np.where(t.images > 0, t.images, 1).astype(np.float64)
    n_cn_req = t.n_controlnets.astype(np.float64)
    n_lora_req = t.n_loras.astype(np.float64)
    # batch of `images` costs ~ images^0.85 of one (DiffServe profiles: 1.78 s at 1, 3.68 s at 4)
    infer = (inf.ref_runtime_s * images ** 0.85 * (steps / inf.ref_steps)
             * (inf.default_pixels / inf.ref_pixels)
             * (1 + inf.controlnet_overhead * n_cn_req) * (1 + inf.lora_overhead * n_lora_req))
    if inf.jitter_cv > 0:
        sigma = np.sqrt(np.log1p(inf.jitter_cv ** 2))
        infer *= rng.lognormal(-sigma * sigma / 2, sigma, size=n)
    if inf.use_trace_exec:
        known = np.isfinite(t.exec_s) & (t.exec_s > 0)
        infer[known] = t.exec_s[known]
        notes.append(f"service time: trace exec seconds for {int(known.sum())} of {n} requests")
    pools, source = _latency_pools(cfg, rng, pool_size, data_dir)
    notes.append(f"remote load times: {source}")
    mean_load = {k: float(v.mean()) for k, v in pools.items()}
    arrival = (t.time - (t.time[0] if n else 0.0)) / cfg.time_scale
    return Workload(arrival, offsets, keys, infer, base, kind, size, names, pools, mean_load,
                    nb + 1, float(t.time[0]) if n else 0.0), notes
