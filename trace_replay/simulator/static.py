"""DiffServe-style static provisioning: replicas partitioned among base models up front.

DiffServe sizes a fixed allocation per model from the expected load and does not move it while
serving. Here: each base model with a demand share s (over the whole trace, an offline oracle
that favours the baseline) gets floor(s x N) dedicated replicas that load and pin it at time 0
(the loads are charged, as prefetches); every other model shares the remaining replicas (at least
one), which cache by the set's eviction policy. Routing is power-of-two by queue length inside
the model's partition, or inside the shared pool.
"""

from __future__ import annotations

import numpy as np

from trace_replay.simulator.control import qlen
from trace_replay.simulator.worker import Worker


def partition(demand: np.ndarray, n_workers: int) -> np.ndarray:
    """Dedicated replicas per base model: floor(share x N), leaving at least one shared replica."""
    total = float(demand.sum())
    k = np.floor(demand / total * n_workers).astype(np.int64) if total > 0 else np.zeros_like(demand)
    while k.sum() > n_workers - 1 and k.sum() > 0:
        k[int(np.argmax(k))] -= 1
    return k


class StaticPartition:
    def attach(self, sim, routable: list[Worker]) -> None:
        self.sim, self.rnd = sim, sim.rnd.random
        wl = sim.wl
        k = partition(np.bincount(wl.base, minlength=wl.n_base).astype(np.float64), len(routable))
        self.owners: dict[int, list[Worker]] = {}
        j = 0
        for b in np.flatnonzero(k).tolist():
            ws = routable[j: j + int(k[b])]
            j += int(k[b])
            self.owners[b] = ws
            for w in ws:
                w.pinned.add(b)
                sim.start_prefetch(w, [b], 0.0)
        self.shared = routable[j:] or list(routable)

    def __call__(self, i: int, comps: list, now: float) -> Worker:
        r = self.owners.get(comps[0], self.shared)
        if len(r) == 1:
            return r[0]
        rnd = self.rnd
        a, b = r[int(rnd() * len(r))], r[int(rnd() * len(r))]
        return a if qlen(a) <= qlen(b) else b
