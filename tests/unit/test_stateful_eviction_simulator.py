"""The cluster simulator's GPU caches with a stateful eviction policy: each worker owns one memory
over its byte budget, reports hits, misses, evictions, prefetches and drops in the documented
order, and evicts in the memory's order (FIFO here, which LRU would not choose)."""

from __future__ import annotations

import numpy as np
import pytest

from policies.eviction import EVICTION, EvictionMemory, is_stateful, propose_victims
from trace_replay.formats import load_trace
from trace_replay.simulator.config import ClusterSpec, ComponentSpec, InferenceSpec, SimConfig
from trace_replay.simulator.engine import Simulation
from trace_replay.simulator.policy_sets import build_runtime, get_policy_set
from trace_replay.simulator.worker import Worker
from trace_replay.simulator.workload import build_workload
from trace_replay.synth import SynthConfig, write_katz_json
from trace_replay.table import LORA, build_table

from tests.stateful_fixtures import FIFO, FifoEviction, LoggingFifoMemory


def one_lora_per_request(seq: list[int]):
    n = len(seq)
    return build_table(n, time=np.arange(n, dtype=float), adapter_offsets=np.arange(n + 1),
                       adapter_kind=np.full(n, LORA), adapter_id=seq, lora_ids=[f"l{i}" for i in range(max(seq) + 1)])


def slots_cfg(k: int, gpus: int = 1) -> SimConfig:
    """Every component 1 GB and room for the default base plus k LoRAs (test_simulator_belady)."""
    return SimConfig(cluster=ClusterSpec(gpus=gpus, gpu_model_gb=k + 1.5, load_model="bandwidth"),
                     components=ComponentSpec(base_gb=(1.0, 1.0), lora_gb=(1.0, 1.0), controlnet_gb=(1.0, 1.0)),
                     inference=InferenceSpec(jitter_cv=0.0))


def run(table_or_wl, cfg: SimConfig, set_name: str, eviction: str = FIFO) -> Simulation:
    wl = table_or_wl if not hasattr(table_or_wl, "adapter_offsets") else build_workload(table_or_wl, cfg)[0]
    spec = get_policy_set(set_name).model_copy(update={"eviction": eviction, "eviction_args": {}})
    sim = Simulation(wl, cfg, build_runtime(spec, cfg))
    sim.run()
    return sim


def check_memories(sim: Simulation) -> None:
    """What every worker's memory saw adds up to what its GPU holds."""
    for w in sim.workers:
        mem = w.memory
        assert isinstance(mem, LoggingFifoMemory) and mem.capacity == w.cap_bytes
        assert mem.inserts - mem.evictions == len(w.slot_of)
        assert set(mem.resident) == set(w.slot_of)
        assert mem.resident == {k: float(w.size[s]) for k, s in w.slot_of.items()}  # sizes in bytes
        assert w.free_bytes >= -1e-6


def test_one_gpu_logs_the_documented_order_and_evicts_first_in_first_out():
    # a b a c a: at c the cache (base + 2 LoRAs) is full; FIFO evicts a (loaded first, though just
    # used), LRU would evict b. So the last a is a miss under FIFO and a hit under LRU.
    t = one_lora_per_request([0, 1, 0, 2, 0])
    cfg = slots_cfg(2)
    wl, _ = build_workload(t, cfg)
    base = int(wl.comp_key[0])
    a, b, c = (int(wl.comp_key[wl.comp_offsets[i] + 1]) for i in (0, 1, 3))
    sim = run(wl, cfg, "lru")
    mem = sim.workers[0].memory
    assert mem.log == [
        ("miss", base), ("insert", base, False), ("miss", a), ("insert", a, False),
        ("hit", base), ("miss", b), ("insert", b, False),
        ("hit", base), ("hit", a),
        ("hit", base), ("miss", c), ("evict", a), ("insert", c, False),
        ("hit", base), ("miss", a), ("evict", b), ("insert", a, False),
    ]
    assert all(base not in keys for keys in mem.asked)  # the request's own base is protected
    check_memories(sim)
    lru = run(wl, cfg, "lru", eviction="lru")
    assert lru.workers[0].memory is None
    assert lru.rec.loads_by_kind[LORA] == sim.rec.loads_by_kind[LORA] - 1  # the orders differ


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    out = tmp_path_factory.mktemp("stateful") / "synth.json"
    # small but busy: evictions, coordinator pins and prefetches, autoscaler stops (clear_gpu)
    write_katz_json(SynthConfig(requests=1500, instances=4, seed=3, days=0.05, base_models=20,
                                loras=80, controlnets=6), out)
    c = SimConfig(cluster=ClusterSpec(gpus=4, gpu_model_gb=10.0, host_gb=12.0, disk_gb=30.0), seed=1, slo_s=30.0)
    return build_workload(load_trace(out, "katz"), c)[0], c


class _PinCheckingMemory(LoggingFifoMemory):
    """Also asserts that nothing pinned on its worker is ever offered as a victim."""

    worker = None

    def victim_order(self, keys):
        assert not set(keys) & self.worker.pinned, "a pinned entry was offered as a victim"
        return super().victim_order(keys)


@pytest.mark.parametrize("set_name", ["coordinator", "coordinator-autoscaled"])
def test_cluster_runs_report_every_event(cluster, set_name):
    wl, c = cluster
    spec = get_policy_set(set_name).model_copy(update={"eviction": FIFO, "eviction_args": {}})
    sim = Simulation(wl, c, build_runtime(spec, c))
    for w in sim.workers:
        w.memory = _PinCheckingMemory(w.cap_bytes)
        w.memory.worker = w
    rec = sim.run()
    assert np.all(rec.completions == 1)
    check_memories(sim)
    mems = [w.memory for w in sim.workers]
    assert sum(m.evictions for m in mems) > 0 and sum(len(m.asked) for m in mems) > 0
    assert any(e[2] for m in mems for e in m.events("insert"))  # the coordinator's prefetches
    assert rec.prefetch_loads == sum(e[2] for m in mems for e in m.events("insert"))
    assert all(w.pin_mask is None for w in sim.workers)  # the memory checks the pinned set itself
    if set_name == "coordinator-autoscaled":  # a replica stopped: its cleared GPU was reported
        counts = [n for _, n in rec.active_series]
        assert any(b < a for a, b in zip(counts, counts[1:]))


def test_worker_victims_follow_the_memory_and_skip_protected_and_pinned():
    gb = 1e9
    w = Worker(0, 4 * gb, 0.0, 0.0, slots=2, memory=FifoEviction().new_memory(4 * gb))
    for clock, k in enumerate((10, 11, 12)):  # demand loads (the engine reports the miss)
        w.clock = clock
        w.memory.on_miss(k, float(clock))
        w.insert(k, 1, gb, 0.5, float(clock), uses=1)
    w.insert(13, 1, gb, 0.5, 3.0, uses=0)  # a prefetch: 4 x 1 GB, full, and the arrays grew once
    w.last_seq[w.slot_of[10]] = 99  # 10 was just used: LRU would keep it, FIFO still goes first
    lru_first = int(w.key[propose_victims(EVICTION.create("lru"), w.view(5.0), n=1)[0]])
    w_mem = w.memory
    assert w.victims(FifoEviction(), 5.0, 2 * gb, False, None, ()) == [10, 11]
    assert lru_first == 11  # the view alone would have chosen otherwise
    w.pinned = {11}
    assert w.victims(FifoEviction(), 5.0, 2 * gb, False, None, (10,)) == [12, 13]
    assert w.victims(FifoEviction(), 5.0, 1.0 * gb, False, None, (10,)) == [12]  # stops at enough room
    assert w.victims(FifoEviction(), 5.0, 4 * gb, False, None, (10,)) is None  # 10 and 11 stay
    assert w_mem.asked[-1] == [12, 13]
    assert w.victims(FifoEviction(), 5.0, 0.5 * gb, False, None, (10, 11, 12, 13)) is None
    w.remove(12, 6.0)
    assert w.clear_gpu(7.0) == [10, 11, 13]
    assert w_mem.log == [("miss", 10), ("insert", 10, False), ("miss", 11), ("insert", 11, False),
                         ("miss", 12), ("insert", 12, False), ("insert", 13, True),
                         ("evict", 12), ("evict", 10), ("evict", 11), ("evict", 13)]
    assert w.free_bytes == 4 * gb and not w_mem.resident


def test_stateless_policies_get_no_memory():
    assert not is_stateful(EVICTION.create("lru")) and is_stateful(EVICTION.create(FIFO))
    t = one_lora_per_request([0, 1, 0])
    sim = run(t, slots_cfg(1), "lru", eviction="lru")
    assert all(w.memory is None for w in sim.workers)


class _Counting(EvictionMemory):
    """Forwards every event to a real policy's memory, counting inserts and evictions."""

    def __init__(self, inner: EvictionMemory) -> None:
        self.inner, self.inserts, self.evictions = inner, 0, 0

    def on_hit(self, key, now):
        self.inner.on_hit(key, now)

    def on_miss(self, key, now):
        self.inner.on_miss(key, now)

    def on_insert(self, key, kind, size, cost, now, prefetch=False):
        self.inserts += 1
        self.inner.on_insert(key, kind, size, cost, now, prefetch=prefetch)

    def on_evict(self, key, now):
        self.evictions += 1
        self.inner.on_evict(key, now)

    def victim_order(self, keys):
        return self.inner.victim_order(keys)


@pytest.mark.parametrize("eviction", ["arc", "s3-fifo", "sieve", "gdsf", "cost-aware"])
def test_registered_stateful_policies_run_a_cluster(cluster, eviction):
    wl, c = cluster
    assert is_stateful(EVICTION.create(eviction))
    spec = get_policy_set("coordinator-autoscaled").model_copy(update={"eviction": eviction, "eviction_args": {}})
    sim = Simulation(wl, c, build_runtime(spec, c))
    for w in sim.workers:
        w.memory = _Counting(w.memory)
    rec = sim.run()
    assert np.all(rec.completions == 1)
    assert sum(w.memory.evictions for w in sim.workers) > 0
    for w in sim.workers:
        assert w.memory.inserts - w.memory.evictions == len(w.slot_of)
        assert w.free_bytes >= -1e-6
