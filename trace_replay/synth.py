"""Seeded synthetic workloads shaped like production, written in the Katz JSON schema.

Calibrated to what the sources publish: base-model popularity with a requested Gini (GenTD26:
0.876) and top-5% share (78%), a diurnal rate with bursts, ControlNet/LoRA mixes (share of
requests with each, count per request, Zipf popularity whose hot set drifts day by day), services
A/B, and requests spread unevenly over instances. Because the output is the Katz schema, the
same loader and analyses read synthetic and production traces alike.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trace_replay.arrivals import RateShape, draw_arrivals
from trace_replay.popularity import skewed_counts
from trace_replay.progress import progress


@dataclass(frozen=True)
class SynthConfig:
    requests: int = 100_000
    instances: int = 32
    seed: int = 0
    days: float = 20.0  # Katz: ~550k requests over 20 days
    start_epoch_s: float = 1_704_067_200.0  # 2024-01-01 00:00 UTC
    base_models: int = 500
    gini: float = 0.876  # base-model popularity (GenTD26 finding)
    top_share: float = 0.78  # share of requests to the top 5% of base models
    top_frac: float = 0.05
    null_base_frac: float = 0.002  # base_model_id null in the Katz schema
    service_a_share: float = 0.6
    diurnal_amplitude: float = 0.6  # rate swings between (1-a) and (1+a) of the mean
    peak_hour: float = 14.0
    bursts_per_day: float = 3.0
    burst_factor: float = 4.0
    burst_minutes: float = 15.0  # mean burst length (exponential)
    controlnets: int = 64
    controlnet_share: float = 0.45  # requests with at least one ControlNet
    controlnet_counts: tuple[float, ...] = (0.75, 0.2, 0.05)  # P(1), P(2), P(3) given some
    controlnet_zipf: float = 1.1
    loras: int = 4000
    lora_share: float = 0.55
    lora_counts: tuple[float, ...] = (0.7, 0.2, 0.07, 0.03)
    lora_zipf: float = 1.0
    lora_drift_per_day: int = 25  # popularity ranks rotate by this many LoRAs per day
    null_lora_frac: float = 0.01  # null entries inside lora lists (allowed by the schema)
    instance_skew: float = 5.0  # Dirichlet concentration of instance weights (lower = more skew)
    extra: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if self.requests < 1 or self.instances < 2:
            raise ValueError("requests must be >= 1 and instances >= 2 (one per service at least)")
        for name in ("controlnet_counts", "lora_counts"):
            if abs(sum(getattr(self, name)) - 1.0) > 1e-9:
                raise ValueError(f"{name} must sum to 1")


def rate_shape(cfg: SynthConfig, rng: np.random.Generator) -> RateShape:
    """Diurnal sinusoid on 1-minute windows, times random bursts."""
    minutes = max(1, int(round(cfg.days * 1440)))
    edges = cfg.start_epoch_s + 60.0 * np.arange(minutes + 1)
    hour = (np.arange(minutes) / 60.0) % 24.0
    rate = 1.0 + cfg.diurnal_amplitude * np.cos(2 * np.pi * (hour - cfg.peak_hour) / 24.0)
    for _ in range(rng.poisson(cfg.bursts_per_day * cfg.days)):
        start = rng.integers(0, minutes)
        length = max(1, int(rng.exponential(cfg.burst_minutes)))
        rate[start:start + length] *= cfg.burst_factor
    return RateShape(edges, rate)


def _zipf_p(n: int, s: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    return w / w.sum()


def _adapter_lists(n: int, share: float, count_p: tuple[float, ...], pool: int, zipf: float,
                   day: np.ndarray, drift: int, service: np.ndarray, rng: np.random.Generator):
    """CSR (offsets, ids) of adapter lists: which requests have some, how many, which ones."""
    has = rng.random(n) < share
    counts = np.zeros(n, dtype=np.int64)
    counts[has] = rng.choice(np.arange(1, len(count_p) + 1), size=int(has.sum()), p=count_p)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    owner = np.repeat(np.arange(n), counts)
    rank = rng.choice(pool, size=owner.size, p=_zipf_p(pool, zipf))
    # each service ranks the pool its own way, and the hot set rotates by `drift` a day
    perms = np.stack([rng.permutation(pool) for _ in range(2)])
    ids = perms[service[owner], (rank + day[owner] * drift) % pool]
    return offsets, ids


def generate(cfg: SynthConfig) -> dict[str, np.ndarray | list[str]]:
    """Columns of a synthetic trace (times sorted)."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    n = cfg.requests
    times = draw_arrivals(n, rate_shape(cfg, rng), rng)
    day = ((times - cfg.start_epoch_s) // 86400).astype(np.int64)
    n_a = min(cfg.instances - 1, max(1, round(cfg.instances * cfg.service_a_share)))
    service = (rng.random(n) >= cfg.service_a_share).astype(np.int64)  # 0 = A, 1 = B
    inst_service = np.array([0] * n_a + [1] * (cfg.instances - n_a))
    instance = np.empty(n, dtype=np.int64)
    for s in (0, 1):
        pool = np.flatnonzero(inst_service == s)
        w = rng.dirichlet(np.full(pool.size, cfg.instance_skew))
        sel = service == s
        instance[sel] = pool[rng.choice(pool.size, size=int(sel.sum()), p=w)]
    counts = skewed_counts(n, cfg.base_models, cfg.gini, cfg.top_share, cfg.top_frac)
    base = rng.permutation(np.repeat(np.arange(cfg.base_models), counts))
    base[rng.random(n) < cfg.null_base_frac] = -1
    cn_off, cn_ids = _adapter_lists(n, cfg.controlnet_share, cfg.controlnet_counts, cfg.controlnets,
                                    cfg.controlnet_zipf, day, 0, service, rng)
    lo_off, lo_ids = _adapter_lists(n, cfg.lora_share, cfg.lora_counts, cfg.loras, cfg.lora_zipf, day,
                                    cfg.lora_drift_per_day, service, rng)
    lo_ids[rng.random(lo_ids.size) < cfg.null_lora_frac] = -1
    ips = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(cfg.instances)]
    return {"time": times, "service": service, "instance": instance, "base": base,
            "cn_off": cn_off, "cn_ids": cn_ids, "lo_off": lo_off, "lo_ids": lo_ids, "ips": ips,
            "inst_service": inst_service}


def write_katz_json(cfg: SynthConfig, out: str | Path, show_progress: bool = False) -> dict[str, object]:
    """Generate and write one request object per line inside a JSON array (valid JSON)."""
    g = generate(cfg)
    ip = [json.dumps(s) for s in g["ips"]]
    scene = ['"A"', '"B"']
    base_s = [f'"m{i:05d}"' for i in range(cfg.base_models)]
    cn_s = [f'"cn{i:03d}"' for i in range(cfg.controlnets)]
    lo_s = [f'"lora{i:05d}"' for i in range(cfg.loras)]
    times, svc, inst, base = (g["time"].tolist(), g["service"].tolist(), g["instance"].tolist(),
                              g["base"].tolist())
    cn_off, cn_ids, lo_off, lo_ids = (g["cn_off"].tolist(), g["cn_ids"].tolist(), g["lo_off"].tolist(),
                                      g["lo_ids"].tolist())
    n = cfg.requests
    chunk = 200_000
    with open(out, "w", encoding="utf-8") as f:
        f.write("[\n")
        for lo in progress(range(0, n, chunk), desc="synth", disable=not show_progress):
            parts = []
            for i in range(lo, min(n, lo + chunk)):
                a, b = cn_off[i], cn_off[i + 1]
                cns = "[" + ", ".join(cn_s[c] for c in cn_ids[a:b]) + "]" if b > a else "null"
                a, b = lo_off[i], lo_off[i + 1]
                los = "[" + ", ".join("null" if c < 0 else lo_s[c] for c in lo_ids[a:b]) + "]" if b > a else "null"
                bm = "null" if base[i] < 0 else base_s[base[i]]
                parts.append(f'{{"timestamp": {times[i]:.3f}, "ip": {ip[inst[i]]}, "scene_id": '
                             f'{scene[svc[i]]}, "base_model_id": {bm}, "controlnets": {cns}, "loras": {los}}}')
            f.write(",\n".join(parts))
            f.write(",\n" if lo + chunk < n else "\n")
        f.write("]\n")
    return {"config": asdict(cfg), "out": str(out)}
