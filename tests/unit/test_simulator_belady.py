"""The simulator's offline reference: Belady's MIN on a next-use oracle, checked against the
`t2i trace cache` rules where the two must agree (one GPU serves every request in trace order)."""

from __future__ import annotations

import numpy as np
import pytest

from trace_replay.cache_sim import run_cache
from trace_replay.simulator import SimConfig, simulate
from trace_replay.simulator.config import ClusterSpec, ComponentSpec, InferenceSpec
from trace_replay.simulator.oracle import NextUseOracle
from trace_replay.simulator.workload import build_workload
from trace_replay.table import LORA, build_table

from policies.eviction import NEVER


def one_lora_per_request(seq: list[int]):
    n = len(seq)
    return build_table(n, time=np.arange(n, dtype=float), adapter_offsets=np.arange(n + 1),
                       adapter_kind=np.full(n, LORA), adapter_id=seq, lora_ids=[f"l{i}" for i in range(max(seq) + 1)])


def slots_cfg(k: int, gpus: int = 1) -> SimConfig:
    """Every component 1 GB and room for the (always used) default base plus k LoRAs: the GPU
    cache is then a k-slot adapter cache, as under the `t2i trace cache` rules."""
    return SimConfig(cluster=ClusterSpec(gpus=gpus, gpu_model_gb=k + 1.5, load_model="bandwidth"),
                     components=ComponentSpec(base_gb=(1.0, 1.0), lora_gb=(1.0, 1.0), controlnet_gb=(1.0, 1.0)),
                     inference=InferenceSpec(jitter_cv=0.0))


def zipf_sequence(seed: int, n: int = 300, keys: int = 14) -> list[int]:
    rng = np.random.default_rng(seed)
    return ((rng.zipf(1.3, size=n) - 1) % keys).tolist()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 3, 5])
def test_one_gpu_matches_the_trace_cache_rules_for_lru_lfu_and_belady(seed, k):
    t = one_lora_per_request(zipf_sequence(seed))
    loads = {}
    for policy in ("lru", "lfu", "belady"):
        res = simulate(t, policy, slots_cfg(k))
        lora_loads = res.records.loads_by_kind[LORA]
        assert lora_loads == run_cache(t, policy, [k]).summary(k)["misses"], policy
        loads[policy] = lora_loads
    assert loads["belady"] <= min(loads["lru"], loads["lfu"])
    assert k == 1 or loads["belady"] < loads["lru"]  # the comparison has teeth: MIN does better


def test_next_use_oracle_by_hand():
    # requests: a, b, a, c, b  (one LoRA each, after the default base model)
    t = one_lora_per_request([0, 1, 0, 2, 1])
    wl, _ = build_workload(t, slots_cfg(2))
    o = NextUseOracle(wl)
    a, b, c = (int(wl.comp_key[wl.comp_offsets[i] + 1]) for i in (0, 1, 3))
    base = int(wl.comp_key[0])
    assert o.next_at[wl.comp_offsets[:-1]].tolist() == [1, 2, 3, 4, NEVER]  # the base, every request
    assert [o.next_at[wl.comp_offsets[i] + 1] for i in range(5)] == [2, 4, NEVER, NEVER, NEVER]
    assert (o.next_after(a, 0), o.next_after(a, 2), o.next_after(b, 1), o.next_after(c, 0)) == (2, NEVER, 4, 3)
    assert o.next_after(base, 4) == NEVER


def test_belady_set_runs_on_several_gpus_and_is_deterministic():
    seq = zipf_sequence(7, n=400, keys=30)
    t = one_lora_per_request(seq)
    cfg = slots_cfg(3, gpus=3).model_copy(update={"time_scale": 4.0})
    a = simulate(t, "belady", cfg)
    b = simulate(t, "belady", cfg)
    assert a.summary["loads"] == b.summary["loads"] and np.array_equal(a.records.worker, b.records.worker)
    assert np.all(a.records.completions == 1)


def test_an_online_eviction_name_gets_no_future():
    # only an offline policy is handed the oracle; LRU's view has no next_seq to peek at
    from trace_replay.simulator.engine import Simulation
    from trace_replay.simulator.policy_sets import build_runtime

    t = one_lora_per_request([0, 1, 0])
    wl, _ = build_workload(t, slots_cfg(1))
    sim = Simulation(wl, slots_cfg(1), build_runtime("lru", slots_cfg(1)))
    assert sim.oracle is None and sim.workers[0].view(0.0).next_seq is None
