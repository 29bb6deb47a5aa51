"""Adapter loading per instance under eviction policies at cache capacities 1..K, MIN included."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trace_replay.cache_sim import access_stream, sweep
from trace_replay.report import new_figure, save
from trace_replay.table import RequestTable

LABELS = {"lru": "LRU", "lfu": "LFU", "belady": "Belady MIN (offline optimum)"}


def adapter_loading(table: RequestTable, policies: list[str], capacities: list[int], workers: int = 1,
                    out_dir: str | Path | None = None, show_progress: bool = False,
                    ) -> tuple[list[dict], list[str], dict[str, np.ndarray]]:
    """Loads (= misses) per instance for each policy and capacity; rows aggregate per service."""
    stream = access_stream(table)
    misses = sweep(stream, policies, capacities, workers=workers, show_progress=show_progress)
    inst_service = np.full(len(stream.instances), -1, dtype=np.int64)
    inst_service[table.instance] = table.service  # an instance serves one service (Katz: scene_id, ip)
    groups = [(name, np.flatnonzero(inst_service == i)) for i, name in enumerate(table.services)]
    groups = [(n, g) for n, g in groups if g.size and stream.lengths[g].sum()]
    rows = []
    for svc, inst in groups:
        acc = int(stream.lengths[inst].sum())
        for p in policies:
            m = misses[p][inst]
            for j, c in enumerate(capacities):
                rows.append({"service": svc, "policy": p, "capacity": c, "accesses": acc,
                             "loads": int(m[:, j].sum()), "load_ratio": float(m[:, j].sum() / acc),
                             "median_per_instance": float(np.median(m[:, j])),
                             "p90_per_instance": float(np.percentile(m[:, j], 90))})
    paths: list[str] = []
    if out_dir is not None and groups:
        fig, ax = new_figure(len(groups))
        for a, (svc, inst) in zip(ax, groups):
            for p in policies:
                m = misses[p][inst]
                line, = a.plot(capacities, np.median(m, axis=0), marker="o", ms=3,
                               label=f"{LABELS.get(p, p)}, median")
                a.fill_between(capacities, np.percentile(m, 10, axis=0), np.percentile(m, 90, axis=0),
                               color=line.get_color(), alpha=0.15)
            a.plot([], [], color="grey", alpha=0.3, lw=6, label="p10-p90 across instances")
            a.set(title=f"Service {svc}: adapter loads per instance",
                  xlabel="cache capacity (adapters per instance)", ylabel="loads per instance", yscale="log")
            a.legend(fontsize=8)
        paths = save(fig, out_dir, "adapter_loading")
    return rows, paths, misses
