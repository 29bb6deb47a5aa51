"""Next-use oracle for offline eviction policies (Belady's MIN) in the cluster simulator.

``t2i trace cache`` knows each cache's future exactly: the trace fixes which instance serves a
request. In the cluster the router decides that online, so no per-replica future exists before
the run. What the oracle gives instead is the cluster-wide future: for a component on a GPU, the
index of the next request (in arrival order) that needs it, wherever it will be served. Belady's
rule on that (evict what the cluster needs farthest ahead) is the offline reference the online
policies are measured against. It is a heuristic reference, NOT a bound: with byte sizes
(size-aware MIN is NP-hard), routing decided online and a next use that may fall on another
replica, an online policy can load less than it. The exact MIN stays where it is exact:
``t2i trace cache`` (one cache per instance, unit slots; ``trace_replay/cache_sim.py``).

Request indices are the oracle's clock: monotone in time, so ``CacheView.next_seq`` ranks the
same whether it holds sequence numbers or request indices (Belady reads only its order).
"""

from __future__ import annotations

import numpy as np

from policies.eviction import EMPTY, NEVER
from trace_replay.simulator.workload import Workload


class NextUseOracle:
    """Per component occurrence, the next request needing the same key; per key, all of them."""

    def __init__(self, wl: Workload) -> None:
        n = len(wl)
        req = np.repeat(np.arange(n, dtype=np.int64), np.diff(wl.comp_offsets))
        key = wl.comp_key
        by_key = np.lexsort((req, key))  # grouped by key, in request order inside a key
        same = key[by_key[1:]] == key[by_key[:-1]]
        nxt = np.full(key.size, NEVER, dtype=np.int64)
        nxt[by_key[:-1][same]] = req[by_key[1:][same]]
        self.next_at = nxt  # indexed like wl.comp_key
        self.requests_of_key = req[by_key]  # CSR over keys: sorted request indices
        self.key_start = np.searchsorted(key[by_key], np.arange(wl.n_keys + 1))

    def next_after(self, key: int, i: int) -> int:
        """The first request after ``i`` that needs ``key``, or NEVER."""
        lo, hi = self.key_start[key], self.key_start[key + 1]
        j = lo + int(np.searchsorted(self.requests_of_key[lo:hi], i, side="right"))
        return int(self.requests_of_key[j]) if j < hi else int(NEVER)

    def refresh(self, w, i: int) -> None:
        """Bring ``w``'s next uses up to date as of request ``i``: an entry whose recorded next use
        is not after ``i`` was needed (elsewhere, or here) since it was recorded, so look again."""
        stale = ((w.key != EMPTY) & (w.next_seq <= i)).nonzero()[0]
        for s in stale.tolist():
            w.next_seq[s] = self.next_after(int(w.key[s]), i)
