"""CostLRFU.eviction_order (the simulator's one-cache form) orders victims exactly as priority()
with a stable lexsort does (the vectorised form the live store calls through propose_victims)."""

from __future__ import annotations

import numpy as np
import pytest

from policies.cost_aware import CostLRFU
from policies.eviction import EMPTY, CacheView


def _view(rng: np.random.Generator, slots: int, seq: int, with_sizes: bool, with_costs: bool) -> CacheView:
    key = np.where(rng.random(slots) < 0.7, rng.integers(0, 50, slots), EMPTY).astype(np.int64)
    last = rng.integers(max(seq - 400, -1), seq + 1, slots).astype(np.int64)
    last[rng.random(slots) < 0.2] = seq - int(rng.integers(0, 3))  # near-ties in recency
    uses = rng.integers(0, 4, slots).astype(np.int64)
    uses[rng.random(slots) < 0.3] = 0
    kind = rng.integers(-1, 4, slots).astype(np.int8)  # out-of-range kinds are clipped by both forms
    size = rng.choice(np.array([0.0, 3e8, 3e8, 2.5e9, 7e9]), slots) if with_sizes else None
    cost = rng.choice(np.array([4.6, 4.6, 5.1, 22.6, 31.0]), slots) if with_costs else None
    return CacheView(key, kind, uses, last, last.copy(), np.zeros(slots), np.array(seq, np.int64),
                     np.array(0.0), None, size, cost)


@pytest.mark.parametrize("half_life", [64.0, 3.0, 1e5])
@pytest.mark.parametrize("with_sizes,with_costs", [(True, True), (False, True), (True, False)])
def test_eviction_order_matches_priority(half_life, with_sizes, with_costs):
    pol = CostLRFU(half_life_accesses=half_life)
    rng = np.random.default_rng(int(half_life) + 2 * with_sizes + with_costs)
    for _ in range(400):
        slots = int(rng.integers(1, 33))
        seq = int(rng.choice([0, 5, 300, 50_000, 10_000_000]))
        v = _view(rng, slots, seq, with_sizes, with_costs)
        cand = np.flatnonzero(v.key != EMPTY)
        u, last = pol.priority(v)
        want = cand[np.lexsort((last[cand], u[cand]))].tolist()
        got = pol.eviction_order(cand.tolist(), v.kind.tolist(), v.uses.tolist(), v.last_seq.tolist(), seq,
                                 None if v.size_bytes is None else v.size_bytes.tolist(),
                                 None if v.load_cost_s is None else v.load_cost_s.tolist())
        assert got == want


def test_decay_table_is_numpys_exp2():
    """The table's values are those exp2 gives on a cache-sized array (no last-bit drift)."""
    pol = CostLRFU()
    table = pol._decay_table()
    idle = np.random.default_rng(0).integers(0, len(table), 20_000)
    for chunk in np.split(idle, 625):  # 32 at a time, as a worker's view
        np.testing.assert_array_equal(np.exp2(-chunk.astype(np.float64) / pol.half_life_accesses),
                                      np.array(table)[chunk])
    assert np.exp2(-(len(table) - 1) / pol.half_life_accesses) == 0.0  # underflowed: the rest is 0
