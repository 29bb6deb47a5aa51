"""Simulator semantics: tie-break order, exact tiny scenarios, loads only on misses, SLO counting."""

from __future__ import annotations

import heapq
import random
from types import SimpleNamespace

import numpy as np
import pytest

from trace_replay.simulator import PolicySetSpec, SimConfig, simulate
from trace_replay.simulator.control import Pow2Holder
from trace_replay.simulator.config import ClusterSpec, ComponentSpec, InferenceSpec, ReloadOverhead
from trace_replay.simulator.events import ARRIVAL, FINISH, READY, TICK, arrival_first
from trace_replay.simulator.metrics import summarize
from trace_replay.simulator.policy_sets import get_policy_set
from trace_replay.table import build_table

GB = 1e9
NO_OVERHEAD = ReloadOverhead(base_model=0.0, controlnet=0.0, lora=0.0)


def table(times: list[float], bases: list[int], n_bases: int = 4):
    return build_table(len(times), time=np.array(times, float), base_model=np.array(bases, np.int32),
                       base_models=[f"m{i}" for i in range(n_bases)])


def exact_cfg(gpus: int = 1, gpu_gb: float = 18.0, host_gb: float = 32.0, slo_s: float = 60.0) -> SimConfig:
    """Deterministic costs: every base model is 4 GB, a cold load is 4 GB at 1 GB/s = 4 s, a host
    reload 4 GB at 12 GB/s (no per-load overhead), and every request computes exactly 2 s."""
    return SimConfig(
        cluster=ClusterSpec(gpus=gpus, gpu_model_gb=gpu_gb, host_gb=host_gb, disk_gb=0, load_model="bandwidth",
                            remote_gbps=1.0, pcie_gbps=12.0),
        components=ComponentSpec(base_gb=(4.0, 4.0), reload_overhead_s=NO_OVERHEAD),
        inference=InferenceSpec(ref_runtime_s=2.0, ref_steps=30, default_steps=30, jitter_cv=0.0),
        slo_s=slo_s)


def latency(res) -> np.ndarray:
    return res.records.finish - res.workload.arrival


def test_event_tuples_order_by_time_then_documented_priority_then_sequence():
    heap: list[tuple] = []
    for ev in [(5.0, TICK, 1), (5.0, ARRIVAL, 2), (5.0, READY, 3), (5.0, FINISH, 5), (5.0, FINISH, 4), (4.0, TICK, 6)]:
        heapq.heappush(heap, ev)
    order = [heapq.heappop(heap) for _ in range(len(heap))]
    assert order == [(4.0, TICK, 6), (5.0, FINISH, 4), (5.0, FINISH, 5), (5.0, READY, 3),
                     (5.0, ARRIVAL, 2), (5.0, TICK, 1)]
    assert not arrival_first(5.0, (5.0, FINISH, 1)) and not arrival_first(5.0, (5.0, READY, 1))
    assert arrival_first(5.0, (5.0, TICK, 1)) and arrival_first(4.9, (5.0, FINISH, 1))


def test_a_completion_frees_its_worker_before_an_arrival_at_the_same_instant():
    # max_ongoing=1: a busy holder is skipped for another replica, which would reload the model.
    # The arrival at t=6 coincides with the first job's end (4 s load + 2 s compute): because
    # FINISH goes first, the holder is free and serves it warm.
    spec = get_policy_set("lru").model_copy(update={"routing_args": {"max_ongoing": 1}})
    res = simulate(table([0.0, 6.0], [0, 0]), spec, exact_cfg(gpus=2))
    assert res.records.worker[1] == res.records.worker[0]
    assert res.records.load_s.tolist() == [4.0, 0.0]
    assert latency(res).tolist() == [6.0, 2.0]


def test_ray_router_compares_two_distinct_replicas():
    # Ray's power of two choices draws two different replicas: a request for a model no replica
    # holds, arriving while one of two replicas is busy, always goes to the idle one. Drawn with
    # replacement (as this router once did), a quarter of seeds would queue it behind the busy one.
    for seed in range(24):
        cfg = exact_cfg(gpus=2).model_copy(update={"seed": seed})
        res = simulate(table([0.0, 0.1], [0, 1]), "lru", cfg)
        assert res.records.worker[1] != res.records.worker[0], seed
        assert res.records.start[1] == 0.1


def test_ray_router_compares_two_distinct_holders():
    # two replicas hold the model, one idle and one with a queue: two distinct draws compare both,
    # so the idle one always wins (with replacement, a quarter of the draws would see only the busy)
    workers = [SimpleNamespace(idx=j, queue=[], busy=False, n_base=1, routable=True) for j in range(4)]
    workers[1].busy, workers[1].queue = True, [object()] * 3
    for seed in range(5):
        sim = SimpleNamespace(workers=workers, holders={0: {0, 1}}, rnd=random.Random(seed), watch=None)
        router = Pow2Holder(max_ongoing=8)
        router.attach(sim, workers)
        assert {router(0, [0], 0.0).idx for _ in range(200)} == {0}


def test_simultaneous_arrivals_are_served_in_trace_order():
    res = simulate(table([1.0, 1.0, 1.0], [2, 0, 1]), "lru", exact_cfg())
    assert res.workload.base.tolist() == [2, 0, 1]  # rows kept in file order (times shift to 0)
    assert res.records.start.tolist() == [0.0, 6.0, 12.0]  # each: 4 s cold load + 2 s compute


def test_one_gpu_two_requests_exact_latencies():
    res = simulate(table([0.0, 1.0], [0, 0]), "lru", exact_cfg())
    rec = res.records
    assert rec.start.tolist() == [0.0, 6.0]  # the second waits for the first
    assert latency(res).tolist() == [6.0, 7.0]  # 4 s load + 2 s; then 5 s queued + 2 s (warm)
    assert rec.load_s.tolist() == [4.0, 0.0]
    assert res.summary["load_seconds"] == 4.0 and res.summary["loads"] == 1
    assert res.summary["gpu_busy_seconds"] == 8.0 and res.summary["makespan_s"] == 8.0


def test_load_is_charged_only_on_a_miss_and_a_reload_comes_from_host_memory():
    # 5 GB of GPU: one 4 GB base fits, so m1 evicts m0 and m0 comes back from the host tier
    res = simulate(table([0, 10, 20, 30], [0, 0, 1, 0]), "lru", exact_cfg(gpu_gb=5.0))
    rec = res.records
    assert rec.misses.tolist() == [1, 0, 1, 1]
    assert rec.load_s[:3].tolist() == [4.0, 0.0, 4.0]
    assert rec.load_s[3] == pytest.approx(4.0 / 12.0)  # host -> GPU at 12 GB/s
    # without a host tier the reload is cold again
    cold = simulate(table([0, 10, 20, 30], [0, 0, 1, 0]), "lru", exact_cfg(gpu_gb=5.0, host_gb=0.0))
    assert cold.records.load_s.tolist() == [4.0, 0.0, 4.0, 4.0]


def test_fixed_model_count_evicts_the_least_recently_used_base():
    # ray-default: 3 models per replica although 18 GB would hold 4; m0 is the LRU one at m3's load
    spec = get_policy_set("ray-default").model_copy(update={"autoscaling": "none", "tick_s": 0.0})
    res = simulate(table([0, 10, 20, 30, 40, 50], [0, 1, 2, 3, 1, 0]), spec, exact_cfg())
    assert res.records.misses.tolist() == [1, 1, 1, 1, 0, 1]
    lfu = PolicySetSpec(name="lfu3", eviction="lfu", max_models_per_replica=3, host_cache=False)
    res = simulate(table([0, 10, 20, 30, 40, 50, 60], [0, 0, 1, 2, 3, 0, 1]), lfu, exact_cfg())
    assert res.records.misses.tolist() == [1, 0, 1, 1, 1, 0, 1]  # LFU keeps m0 (2 uses), drops m1


def test_slo_violations_count_latency_strictly_above_the_slo():
    res = simulate(table([0.0, 1.0], [0, 0]), "lru", exact_cfg())  # latencies 6 and 7
    for slo, expected in ((5.0, 2), (6.0, 1), (6.5, 1), (7.0, 0)):
        s = summarize(res.workload, res.records, slo, "lru", 1)
        assert s["slo_violations"] == expected and s["slo_violation_rate"] == expected / 2


def test_ray_default_holds_requests_beyond_max_ongoing_and_scales_up_after_the_delay():
    # 40 requests at once on 1 of 4 GPUs: 5 go to the replica (max_ongoing_requests), 35 wait in
    # the router. Ray's queue-length policy wants 40 / 2 -> 4 replicas; the Guardrails' 30 s
    # upscale delay holds until the tick at t=30, and the new replicas serve from t=40 (10 s start).
    res = simulate(table([0.0] * 40, [0] * 40), "ray-default", exact_cfg(gpus=4))
    rec = res.records
    assert rec.completions.tolist() == [1] * 40
    assert [a for t, a in rec.active_series if t < 40.0] == [1]
    assert (40.0, 4) in rec.active_series
    first = rec.worker == rec.worker[0]
    assert np.all(rec.start[~first] >= 40.0)  # the others only ever served held requests
    assert rec.start[5] == pytest.approx(6.0 + 4 * 2.0)  # the 6th waited in the router, then FIFO


def test_static_partition_gives_floor_of_share_and_keeps_a_shared_replica():
    from trace_replay.simulator.static import partition

    assert partition(np.array([50.0, 30, 15, 5]), 10).tolist() == [5, 3, 1, 0]
    assert partition(np.array([100.0, 0]), 4).tolist() == [3, 0]  # one replica stays shared


def test_coordinator_persists_a_hot_base_model_on_several_replicas():
    from trace_replay.simulator.engine import Simulation
    from trace_replay.simulator.policy_sets import build_runtime
    from trace_replay.simulator.workload import build_workload

    rng = np.random.default_rng(0)
    n = 1200  # 20 minutes at 1 req/s, 90% on m0: m0 is the hot pipeline
    bases = np.where(rng.random(n) < 0.9, 0, rng.integers(1, 4, n)).tolist()
    cfg = exact_cfg(gpus=4)
    wl, _ = build_workload(table(np.arange(n, dtype=float).tolist(), bases), cfg)
    sim = Simulation(wl, cfg, build_runtime("coordinator", cfg))
    rec = sim.run()
    assert rec.completions.tolist() == [1] * n
    pinned = [w.idx for w in sim.workers if 0 in w.pinned]
    assert len(pinned) >= 2  # popularity-bands: at least min_replicas=2 copies of a hot pipeline
    assert all(0 in sim.workers[j].slot_of for j in pinned)  # and they hold it


@pytest.mark.parametrize("rate,expect_prefetch", [(1e-6, False), (1.0, True)])
def test_coordinator_prefetches_a_warm_pipeline_only_when_it_is_likely_to_come_back(rate, expect_prefetch):
    # The bandit's prior for an untried arm: P(used) = 1 - exp(-rate x window / (holders + 1)).
    # A pipeline seen once a week is not worth a load; one seen every second is.
    from trace_replay.simulator.engine import Simulation
    from trace_replay.simulator.policy_sets import build_runtime
    from trace_replay.simulator.workload import build_workload

    cfg = exact_cfg(gpus=2)
    wl, _ = build_workload(table([0.0, 1.0], [0, 1]), cfg)
    sim = Simulation(wl, cfg, build_runtime("coordinator", cfg))
    sim.rt.attach(sim)
    co = sim.rt.placement
    st = co.st  # the control core's state (policies/coordination.py)
    p = co.pid_list[1]  # the pipeline of base model m1
    st.warm = np.array([p])
    st.warm_rate = np.array([rate])
    st.warm_base = np.array([int(co.comps[p][0])])
    st.warm_flat, st.warm_off = co.comps[p].astype(np.int64), np.array([0, len(co.comps[p])])
    w = sim.workers[0]
    co.on_idle(w, 0.0)
    assert (sim.rec.prefetch_loads > 0) == expect_prefetch
    assert (p in st.open[0]) == expect_prefetch


@pytest.mark.parametrize("calibrate", [True, False])
def test_unused_prefetches_calibrate_the_rate_model_down(calibrate):
    # The rate model said P(used) = 1 for nine earlier prefetches and none was used: calibrated,
    # P(used) is scaled by (0 + 1) / (9 + 1), the prior turns negative and the pipeline the
    # model rates at one request a second is no longer prefetched.
    from trace_replay.simulator.engine import Simulation
    from trace_replay.simulator.policy_sets import build_runtime
    from trace_replay.simulator.workload import build_workload

    cfg = exact_cfg(gpus=2)
    spec = get_policy_set("coordinator").model_copy(update={"placement_args": {"calibrate": calibrate}})
    wl, _ = build_workload(table([0.0, 1.0], [0, 1]), cfg)
    sim = Simulation(wl, cfg, build_runtime(spec, cfg))
    sim.rt.attach(sim)
    co = sim.rt.placement
    st, window = co.st, co.core.window
    for fake_pid in range(100, 109):  # closed windows: paid 4 s, no hit, predicted P(used) = 1
        st.open[1][fake_pid] = [0.0, 4.0, 0, 4.0, 1.0, frozenset(), 1]
    co.core._credit(st, window + 1.0)
    assert st.open[1] == {} and (st.uses_predicted, st.uses_seen) == (10.0, 1.0)
    p = co.pid_list[1]
    st.warm, st.warm_rate, st.warm_base = np.array([p]), np.array([1.0]), np.array([int(co.comps[p][0])])
    st.warm_flat, st.warm_off = co.comps[p].astype(np.int64), np.array([0, len(co.comps[p])])
    co.on_idle(sim.workers[0], window + 1.0)
    assert (p in st.open[0]) == (not calibrate)


def test_a_request_that_grows_the_gpu_cache_counts_its_uses_in_the_grown_arrays():
    # 40 one-LoRA requests on one GPU with room for all: the worker's 32 slots grow mid-run, and
    # the request that triggers the growth must count its use in the new arrays
    from trace_replay.table import LORA, build_table

    n = 40
    t = build_table(n, time=np.arange(n, dtype=float), adapter_offsets=np.arange(n + 1),
                    adapter_kind=np.full(n, LORA), adapter_id=np.arange(n), lora_ids=[f"l{i}" for i in range(n)])
    cfg = exact_cfg(gpu_gb=1000.0)
    from trace_replay.simulator.engine import Simulation
    from trace_replay.simulator.policy_sets import build_runtime
    from trace_replay.simulator.workload import build_workload

    wl, _ = build_workload(t, cfg)
    sim = Simulation(wl, cfg, build_runtime("lfu", cfg))
    sim.run()
    w = sim.workers[0]
    assert w.key.shape[0] > 32 and len(w.slot_of) == n + 1  # grew; every LoRA and the base stay
    lora_slots = [w.slot_of[k] for k in w.slot_of if w.kind[w.slot_of[k]] == LORA]
    assert all(w.uses[s] == 1 for s in lora_slots)
