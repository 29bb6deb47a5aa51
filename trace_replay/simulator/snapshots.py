"""``policies.snapshot.ClusterSnapshot`` built from the simulator's workers, for control ticks.

Built on demand (placement, cache-aware scale-down), not kept in place per load: the per-request
path never needs it (routing uses ``control.py``), and a tick-time build is ~1 ms at 300 GPUs.
Disk residency is left out (marked REMOTE): the policies that read snapshots on ticks look at
GPU residency (placement) and load costs by tier (scale-down), and listing a 256 GB disk tier per
replica per tick was most of the coordinator's time.
"""

from __future__ import annotations

import numpy as np

from policies.snapshot import GPU, HOST, REMOTE, SHARED, ClusterSnapshot, ComponentTable, ReplicaTable
from trace_replay.simulator.engine import remaining_s


def component_table(sim) -> ComponentTable:
    """Kinds, sizes and expected seconds-to-GPU from each tier (``engine.tier_costs``, cached)."""
    table = getattr(sim, "_component_table", None)
    if table is None:
        wl = sim.wl
        table = sim._component_table = ComponentTable(wl.key_kind.astype(np.int8), wl.key_size.astype(np.int64),
                                                      sim.tier_cost)
    return table


def snapshot(sim, now: float, rows: list[int] | None = None) -> ClusterSnapshot:
    """Snapshot of the workers ``rows`` (default all), replica index = position in ``rows``."""
    table = component_table(sim)
    ws = sim.workers if rows is None else [sim.workers[j] for j in rows]
    tier = np.full((len(ws), table.n), REMOTE, dtype=np.int8)
    for r, w in enumerate(ws):
        if w.host is not None and w.host.items:
            tier[r, list(w.host.items)] = HOST
        if w.slot_of:
            tier[r, list(w.slot_of)] = GPU
    rep = ReplicaTable(
        tier=tier, queue_len=np.array([len(w.queue) + w.busy for w in ws], np.int64),
        busy_until=np.array([now + remaining_s(w, now) for w in ws], dtype=np.float64),
        gpu_free_bytes=np.array([w.free_bytes for w in ws], np.int64),
        host_free_bytes=np.array([w.host.free if w.host else 0 for w in ws], np.int64),
        pool=np.full(len(ws), SHARED, np.int8), n_models=np.array([w.n_base for w in ws], np.int64))
    return ClusterSnapshot(now, rep, table)
