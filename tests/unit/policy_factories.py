"""Factories for policy tests: small consistent snapshots with read-only arrays."""

from __future__ import annotations

import numpy as np

from policies.snapshot import (BASE, CONTROLNET, DISK, GPU, HOST, LORA, REMOTE, SHARED, ClusterSnapshot,
                               ComponentTable, PipelineKey, ReplicaTable, RouteRequest, freeze)

GB = 1_000_000_000


def components(kinds: list[int], size_gb: list[float] | None = None,
               remote_s: list[float] | None = None) -> ComponentTable:
    """Components of the given kinds; load cost from HOST/DISK is 10%/40% of REMOTE."""
    kinds_a = np.array(kinds, dtype=np.int8)
    default_gb = {BASE: 6.0, CONTROLNET: 2.5, LORA: 0.3}
    default_s = {BASE: 22.6, CONTROLNET: 5.1, LORA: 4.6}
    size = np.array(size_gb if size_gb is not None else [default_gb[k] for k in kinds]) * GB
    remote = np.array(remote_s if remote_s is not None else [default_s[k] for k in kinds], dtype=np.float64)
    cost = np.stack([np.zeros_like(remote), 0.1 * remote, 0.4 * remote, remote], axis=1)
    return ComponentTable(kinds_a, size.astype(np.int64), cost)


def replicas(n: int, n_components: int, gpu_gb: float = 40.0, held: dict[int, list[int]] | None = None,
             queue: list[int] | None = None, busy_s: list[float] | None = None,
             pool: list[int] | None = None) -> ReplicaTable:
    """Replicas; ``held`` maps replica -> components on its GPU."""
    tier = np.full((n, n_components), REMOTE, dtype=np.int8)
    for r, cs in (held or {}).items():
        tier[r, cs] = GPU
    q = np.array(queue if queue is not None else [0] * n, dtype=np.int64)
    return ReplicaTable(tier=tier, queue_len=q,
                        busy_until=np.array(busy_s if busy_s is not None else [0.0] * n, dtype=np.float64),
                        gpu_free_bytes=np.full(n, int(gpu_gb * GB), np.int64),
                        host_free_bytes=np.full(n, 100 * GB, np.int64),
                        pool=np.array(pool if pool is not None else [SHARED] * n, dtype=np.int8),
                        n_models=(tier == GPU).sum(axis=1).astype(np.int64))


def random_snapshot(rng: np.random.Generator, n_replicas: int = 8, n_bases: int = 4, n_cn: int = 3,
                    n_loras: int = 12, now: float = 100.0) -> ClusterSnapshot:
    """A random, consistent, frozen cluster: components 0..n_bases-1 are bases, then ControlNets, LoRAs."""
    kinds = [BASE] * n_bases + [CONTROLNET] * n_cn + [LORA] * n_loras
    comp = components(kinds)
    C = len(kinds)
    tier = rng.choice(np.array([GPU, HOST, DISK, REMOTE], np.int8), size=(n_replicas, C), p=[0.2, 0.1, 0.1, 0.6])
    rep = ReplicaTable(tier=tier, queue_len=rng.integers(0, 8, n_replicas),
                       busy_until=now + rng.random(n_replicas) * 30 - 5,
                       gpu_free_bytes=rng.integers(0, 20, n_replicas) * GB,
                       host_free_bytes=rng.integers(0, 50, n_replicas) * GB,
                       pool=rng.choice(np.array([SHARED, 0, 1, 2], np.int8), n_replicas),
                       n_models=(tier == GPU).sum(axis=1).astype(np.int64))
    return freeze(ClusterSnapshot(now, rep, comp))


def random_pipelines(rng: np.random.Generator, n: int, n_bases: int = 4, n_cn: int = 3,
                     n_loras: int = 12) -> list[PipelineKey]:
    """Distinct-ish pipelines over the component layout of ``random_snapshot``."""
    out = []
    for _ in range(n):
        cn = rng.choice(n_cn, rng.integers(0, 2), replace=False) + n_bases
        lo = rng.choice(n_loras, rng.integers(0, 3), replace=False) + n_bases + n_cn
        out.append(PipelineKey.of(int(rng.integers(n_bases)), cn.tolist(), lo.tolist()))
    return out


def request(key: PipelineKey, band: int = 2, pipeline: int = 0, now: float = 0.0) -> RouteRequest:
    return freeze(RouteRequest(pipeline, key.components(), band, now))
