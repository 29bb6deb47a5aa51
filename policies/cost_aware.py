"""Load costs by kind, and ``cost-lrfu``: keep what is likely reused and expensive to bring back
per byte it holds, with reuse from one decayed frequency.

``cost-lrfu`` was the project's default eviction until it was measured losing to plain LRU on the
GenTD26 trace (one fixed balance of recency against frequency); ``cost-aware``
(``policies/cost_adaptive.py``) replaced it and learns that balance online. This one stays as a
stateless reference and for the simulator's fast one-cache form (``eviction_order``).

The talk's finding: a base-model refresh costs 22.6 s, five times a LoRA update, so one wrong
eviction "can erase minutes of warm state" and recency alone fails. The utility of keeping an
entry is

    reuse probability x load_cost_s / size_bytes x kind weight

and the lowest utility goes first (ties to the least recently used). Reuse probability comes
from the entry's decayed frequency f = (uses + 1) x 2**(-idle / half_life_accesses), where idle
counts the accesses since its last use: frequency and recency in one number, as LRFU does; the
probability is f / (f + 1), which saturates, so among entries that are all likely to come back
the load cost decides. Where the view carries no load costs the talk's per-kind times stand in;
where it carries no sizes the cache counts slots (the adapter cache simulator), so each entry
costs one slot, not its bytes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from policies.eviction import EVICTION, CacheView
from policies.snapshot import BASE, CONTROLNET, LORA

# per kind (index = kind code): the talk's load times (s)
DEFAULT_LOAD_COST_S = {CONTROLNET: 5.1, LORA: 4.6, BASE: 22.6}
# A base model is the prerequisite of every pipeline built on it (its eviction stalls them all,
# and the live store re-patches every adapter after reloading it), which bytes alone do not see:
# at the talk's costs and typical sizes (7 GB base, 0.3 GB LoRA) weight 8 keeps a base over a
# LoRA of equal reuse (22.6/7e9*8 > 4.6/3e8) while a base nobody reuses still goes first. A
# config knob, not a law.
DEFAULT_KIND_WEIGHT = {CONTROLNET: 1.0, LORA: 1.0, BASE: 8.0}


def _by_kind(table: dict[int, float]) -> np.ndarray:
    out = np.ones(max(table) + 1, dtype=np.float64)
    for k, v in table.items():
        out[k] = v
    return out


@EVICTION.register("cost-lrfu")
class CostLRFU:
    """Lowest reuse probability x load cost per byte x kind weight evicted first."""

    name: ClassVar[str] = "cost-lrfu"
    needs_future: ClassVar[bool] = False
    independent_caches: ClassVar[bool] = True
    fields: ClassVar[tuple[str, ...]] = ("kind", "uses", "last_seq")

    def __init__(self, half_life_accesses: float = 64.0, kind_weight: dict[int, float] | None = None,
                 default_load_cost_s: dict[int, float] | None = None) -> None:
        if not half_life_accesses > 0:
            raise ValueError(f"half_life_accesses must be > 0, got {half_life_accesses}")
        self.half_life_accesses = float(half_life_accesses)
        self._weight = _by_kind({**DEFAULT_KIND_WEIGHT, **(kind_weight or {})})
        self._cost = _by_kind({**DEFAULT_LOAD_COST_S, **(default_load_cost_s or {})})
        if (self._weight < 0).any() or (self._cost < 0).any():
            raise ValueError("kind_weight and default_load_cost_s must be >= 0")

    def reuse_probability(self, view: CacheView) -> np.ndarray:
        """f / (f + 1) for the decayed frequency f = (uses + 1) x 2**(-idle accesses / half-life)."""
        seq = np.asarray(view.seq)
        seq = seq[..., None] if seq.ndim else seq  # one cache: a 0-d clock broadcasts as is
        idle = np.maximum(seq - view.last_seq, 0).astype(np.float64)
        f = (view.uses + 1.0) * np.exp2(-idle / self.half_life_accesses)
        return f / (f + 1.0)

    def utility(self, view: CacheView) -> np.ndarray:
        kind = np.minimum(np.maximum(view.kind.astype(np.intp), 0), self._weight.size - 1)  # clip, minus its wrapper
        cost = self._cost[kind] if view.load_cost_s is None else np.asarray(view.load_cost_s, np.float64)
        p = self.reuse_probability(view) * cost * self._weight[kind]
        return p if view.size_bytes is None else p / np.maximum(view.size_bytes, 1).astype(np.float64)

    def priority(self, view: CacheView) -> tuple[np.ndarray, ...]:
        return (self.utility(view), view.last_seq)

    def eviction_order(self, slots, kind, uses, last_seq, seq: int, size_bytes=None, load_cost_s=None) -> list[int]:
        """``slots`` of one cache, best victim first: the order ``priority`` gives (lowest utility,
        then least recently used, then lowest slot, as a stable lexsort does), computed in Python
        floats with the same operations in the same order, so the same values. For a cache of a
        few entries (one GPU) this is several times cheaper than the vectorised form's ~20 numpy
        calls. ``kind``, ``uses``, ``last_seq`` and the optional ``size_bytes`` / ``load_cost_s``
        are sequences indexed by slot (lists: no numpy scalars); ``seq`` is the cache's clock.
        """
        decay = self._decay_table()
        n = len(decay)
        top = self._weight.size - 1
        weight, default_cost = self._weight_list, self._cost_list
        keyed = []
        for s in slots:
            idle = seq - last_seq[s]
            if idle < n:
                e = decay[idle if idle > 0 else 0]  # np.maximum(idle, 0)
            elif self._decay_whole:
                e = 0.0  # past the table 2**(-idle / half-life) underflows to 0
            else:
                e = float(np.exp2(-np.array([float(idle)]) / self.half_life_accesses)[0])
            f = (uses[s] + 1.0) * e
            k = kind[s]
            k = 0 if k < 0 else top if k > top else k
            p = f / (f + 1.0) * (default_cost[k] if load_cost_s is None else load_cost_s[s]) * weight[k]
            if size_bytes is not None:
                b = size_bytes[s]
                p = p / float(b if b >= 1 else 1)
            keyed.append((p, last_seq[s], s))
        keyed.sort()
        return [t[2] for t in keyed]

    def _decay_table(self) -> list[float]:
        """2**(-idle / half-life) for idle = 0, 1, ... up to where it underflows to 0 (2**-1075),
        computed once by numpy's exp2 so each value is the one ``reuse_probability`` computes."""
        table = self.__dict__.get("_decay")
        if table is None:
            n = int(1076 * self.half_life_accesses) + 2
            idle = np.arange(min(n, 1 << 17), dtype=np.int64).astype(np.float64)
            table = self._decay = np.exp2(-idle / self.half_life_accesses).tolist()
            self._decay_whole = len(table) >= n
            self._weight_list, self._cost_list = self._weight.tolist(), self._cost.tolist()
        return table
