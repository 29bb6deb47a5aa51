"""Parity: the live LoRA store makes exactly the eviction decisions the simulators make.

DESIGN.md ("The seam that matters: policy vs mechanism") promises that a cache result measured in
simulation says something about the live system because both call the same policy code from
``policies.eviction``. Sharing the policy is necessary but not sufficient: each side keeps its
own per-entry statistics (``uses``, ``last_seq``, ``loaded_seq``, ``last_time``, the logical
clock ``seq``) and builds the ``CacheView`` the policy reads from them. If one side counts a
demand load as a use and the other does not, or advances its clock twice on a miss, the very
same policy evicts different adapters, and a miss ratio from ``t2i trace cache`` no longer
predicts the store.

So here one seeded, skewed sequence of a few hundred accesses over 12 adapters goes through

(a) ``deployments.lora_store.LoRAStore``, the real class reading real LoRA safetensors files
    (12 built locally, all the same shape, so a byte budget of K adapters is exactly K slots),
    with a fake clock and a fake read timer, so every load "costs" the same;
(b) ``trace_replay.cache_sim``: the same sequence written as a Katz trace of one instance,
    loaded by ``load_trace(..., "katz")``, replayed by ``simulate_sequential`` at capacity K
    (its slots are observed after each request through the prefetch hook, a prefetcher that
    proposes nothing), its miss count checked against ``run_cache``'s fastest engine too;
(c) the cluster simulator: a one-GPU ``Simulation`` whose ``start`` serves each request on its
    ``Worker`` (hits touch the slot, misses go through ``bring`` -> ``Worker.victims`` ->
    ``Worker.insert``), the GPU holding exactly K adapters' bytes;

and for every online eviction policy the store accepts (plus cost-aware with a short half-life,
where recency and the exact ``uses`` count decide, not just frequency), the per-access trace
(hit or miss, and the adapters evicted, in order) must be identical. Parity means equal
decisions on equal inputs; where the inputs differ by design (the live store times its reads,
the simulators plan with a per-kind constant) the test makes them equal and says so. The last
test shows the comparison can fail: other policies, another budget, or the store's old clock
(which also ticked on every load) give different traces.

This test found two divergences, both fixed: the live store's clock ticked on loads as well as
accesses, and the cluster simulator started a demand-loaded entry at ``uses`` 0 where the other
two count the access it serves (1). Scope: one adapter per request; multi-adapter requests differ by design (the cluster simulator
protects a request's other components while loading one, and ticks its clock per request).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from deployments.config import CacheBudgets, ServeConfig
from deployments import lora_store
from deployments.lora_store import LoRAStore
from policies.eviction import EMPTY, EVICTION

N_ADAPTERS = 12
K = 4
N_ACCESSES = 300
ADAPTERS = [f"parity-lora-{i:02d}" for i in range(N_ADAPTERS)]

Trace = list[tuple[str, bool, tuple[str, ...]]]  # per access: adapter, hit, victims in order


def _online_policies() -> list[str]:
    out = []
    for name in EVICTION.names():
        if EVICTION.factory(name).needs_future:
            continue
        try:
            CacheBudgets(lora_store_policy=name)
        except ValueError:
            continue
        out.append(name)
    return out


ONLINE = _online_policies()


def cost_aware_fast_decay():
    """Cost-aware with a half-life of 4 accesses. At the default (64) and K = 4 every cached entry
    was used a few accesses ago, the decay hardly moves and cost-aware decides like LFU; with a
    short half-life recency weighs in, so the definitions of ``uses`` and of the clock matter."""
    from policies.cost_aware import CostLRFU

    return CostLRFU(half_life_accesses=4.0)


FAST_DECAY = f"{__name__}:cost_aware_fast_decay"  # the registry's "module:attr" escape hatch


def test_the_registry_offers_the_policies_this_test_is_about():
    assert {"lru", "lfu", "cost-aware"} <= set(ONLINE), ONLINE


def access_sequence(seed: int = 7) -> list[str]:
    """Zipf-like popularity (exponent 1.1) over a shuffled ranking, every adapter used at least once."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, N_ADAPTERS + 1) ** 1.1
    rank = rng.permutation(N_ADAPTERS)
    seq = rank[rng.choice(N_ADAPTERS, size=N_ACCESSES, p=p / p.sum())]
    seq[rng.choice(N_ACCESSES, size=N_ADAPTERS, replace=False)] = np.arange(N_ADAPTERS)
    return [ADAPTERS[i] for i in seq]


# -- (a) the live store ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parity_config(demo_dir, demo_config, tmp_path_factory) -> ServeConfig:
    """The demo config plus 12 real LoRA files of one shape (rank 1 on to_q/to_v), distinct weights."""
    from diffusers import UNet2DConditionModel

    from app.demo_models import LIGHT_ID, LoraSpec, build_lora

    root = tmp_path_factory.mktemp("parity-loras")
    unet = UNet2DConditionModel.from_pretrained(str(demo_dir / "base" / LIGHT_ID / "unet"))
    for i, adapter in enumerate(ADAPTERS):
        build_lora(root / adapter, LoraSpec(adapter, 1, 1.0, ("to_q", "to_v"), 500 + i), unet, seed=0)
    data = demo_config.model_dump()
    data["models"] += [{"id": a, "kind": "lora", "path": str(root / a)}
                       for a in ADAPTERS]
    return ServeConfig.model_validate(data)


@pytest.fixture(scope="module")
def adapter_bytes(parity_config) -> int:
    sizes = {asyncio.run(LoRAStore(parity_config).get(a))["bytes"] for a in ADAPTERS}
    assert len(sizes) == 1, f"the parity adapters must all be the same size, got {sizes}"
    return sizes.pop()


@pytest.fixture
def steady_reads(monkeypatch):
    """Every adapter read is timed at exactly 1 s: the store feeds measured read times to the
    policy as ``load_cost_s``, which on a real disk is noise (and the first read pays for
    importing diffusers); the simulators plan with one constant per kind. Equal costs are the
    equal inputs under which the decisions must agree."""
    ticks = iter(range(1 << 30))
    monkeypatch.setattr(lora_store, "time", SimpleNamespace(
        perf_counter=lambda: float(next(ticks)), monotonic=time.monotonic))


def run_store(config: ServeConfig, policy: str, budget: int, seq: list[str],
              store_cls: type[LoRAStore] = LoRAStore) -> Trace:
    now = [0.0]
    store = store_cls(config.model_copy(update={"cache": config.cache.model_copy(
        update={"lora_store_bytes": budget, "lora_store_policy": policy})}), clock=lambda: now[0])

    async def replay() -> Trace:
        out: Trace = []
        held: list[str] = []
        for t, adapter in enumerate(seq):
            now[0] = float(t)
            reply = await store.get(adapter)
            after = (await store.stats())["adapters"]
            out.append((adapter, reply["hit"], tuple(a for a in held if a not in after)))
            held = after
        return out

    trace = asyncio.run(replay())
    stats = asyncio.run(store.stats())
    assert stats["hits"] + stats["misses"] == len(seq) and stats["bytes"] <= budget
    return trace


# -- (b) the adapter-cache simulator --------------------------------------------------------------

class _Observe:
    """A prefetcher that proposes nothing and records the cache's slots after each request."""

    name = "observe"

    def __init__(self) -> None:
        self.held: list[np.ndarray] = []

    def propose(self, ctx, rng) -> np.ndarray:
        self.held.append(ctx.view.key[ctx.view.key != EMPTY].copy())
        return np.zeros(0, dtype=np.int64)


def katz_table(tmp_path: Path, seq: list[str]):
    """The sequence as a Katz trace: one instance, one request a second, one LoRA each."""
    from trace_replay.formats import load_trace

    rows = [{"timestamp": float(t), "ip": "10.0.0.1", "scene_id": "A", "base_model_id": "sd15",
             "controlnets": None, "loras": [a]} for t, a in enumerate(seq)]
    path = tmp_path / "parity_trace.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    return load_trace(path, "katz")


def run_cache_sim(table, policy: str) -> Trace:
    from trace_replay.cache_sim import access_stream, run_cache, simulate_sequential

    stream = access_stream(table)
    assert stream.instances and len(stream.instances) == 1 and stream.n_accesses == N_ACCESSES
    n_cn = len(table.controlnet_ids)
    name = {n_cn + i: a for i, a in enumerate(table.lora_ids)}
    keys = [name[int(k)] for k in stream.key]  # the stream's order: time order, one instance
    observer = _Observe()
    misses, pre = simulate_sequential(stream, EVICTION.create(policy), K, prefetch=observer)
    assert pre.sum() == 0 and len(observer.held) == N_ACCESSES
    out: Trace = []
    held: list[str] = []
    for adapter, slots in zip(keys, observer.held):
        after = {name[int(k)] for k in slots}
        out.append((adapter, adapter in held, tuple(a for a in held if a not in after)))
        held = [a for a in held if a in after] + [a for a in sorted(after) if a not in held]
    assert sum(not hit for _, hit, _ in out) == int(misses.sum())
    # the engine `t2i trace cache` runs by default (stack pass or lock-step) counts the same misses
    assert int(run_cache(table, policy, [K], stream=stream).misses.sum()) == int(misses.sum())
    return out


# -- (c) the cluster simulator's GPU cache --------------------------------------------------------

def run_cluster_worker(policy: str, seq: list[str]) -> Trace:
    """One GPU worker of the cluster simulator serving the sequence through ``Simulation.start``."""
    from trace_replay.simulator.config import ClusterSpec, SimConfig
    from trace_replay.simulator.engine import Simulation
    from trace_replay.simulator.workload import Workload

    size_gb = 0.25  # exact in binary: K adapters fill the GPU exactly, K + 1 do not fit
    n = len(seq)
    wl = Workload(
        arrival=np.arange(n, dtype=np.float64), comp_offsets=np.arange(n + 1, dtype=np.int64),
        comp_key=np.array([ADAPTERS.index(a) for a in seq], dtype=np.int64),
        infer_s=np.ones(n), base=np.zeros(n, dtype=np.int64),
        key_kind=np.full(N_ADAPTERS, 1, dtype=np.int8), key_size=np.full(N_ADAPTERS, size_gb * 1e9),
        key_names=list(ADAPTERS), load_pool={}, mean_load_s={0: 5.1, 1: 4.6, 2: 22.6}, n_base=0, t0=0.0)
    cfg = SimConfig(cluster=ClusterSpec(gpus=1, gpu_model_gb=K * size_gb, host_gb=0, disk_gb=0,
                                        load_model="bandwidth"))
    runtime = SimpleNamespace(host_cache=False, eviction=EVICTION.create(policy), max_base=None)
    sim = Simulation(wl, cfg, runtime)
    (w,) = sim.workers
    evicted: list[int] = []
    real_evict = sim.evict

    def evict(worker, key, now):
        evicted.append(key)
        real_evict(worker, key, now)

    sim.evict = evict
    out: Trace = []
    for i, adapter in enumerate(seq):
        evicted.clear()
        sim.start(w, i, [int(wl.comp_key[i])], float(i))
        w.busy = False  # the job is done before the next request: one at a time, no queueing
        out.append((adapter, bool(sim.rec.misses[i] == 0), tuple(ADAPTERS[k] for k in evicted)))
        assert len(w.slot_of) <= K
    return out


# -- the comparisons ------------------------------------------------------------------------------

def first_difference(a: Trace, b: Trace) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"access {i}: {x} vs {y}"
    return f"lengths {len(a)} vs {len(b)}" if len(a) != len(b) else "none"


def summary(trace: Trace) -> str:
    return f"{sum(not h for _, h, _ in trace)} misses, {sum(len(v) for _, _, v in trace)} evictions"


@pytest.fixture(scope="module")
def sequence() -> list[str]:
    return access_sequence()


@pytest.fixture(scope="module")
def table(sequence, tmp_path_factory):
    return katz_table(tmp_path_factory.mktemp("parity-trace"), sequence)


@pytest.mark.parametrize("policy", [*ONLINE, FAST_DECAY])
def test_store_matches_cache_simulator(policy, parity_config, adapter_bytes, steady_reads, sequence, table):
    store = run_store(parity_config, policy, K * adapter_bytes, sequence)
    sim = run_cache_sim(table, policy)
    # a non-trivial run: the cache churns, and some adapters are hit
    assert 0 < sum(h for _, h, _ in sim) < N_ACCESSES and sum(len(v) for _, _, v in sim) > 20
    assert store == sim, (f"{policy}: live store ({summary(store)}) and cache_sim ({summary(sim)}) "
                          f"first differ at {first_difference(store, sim)}")


@pytest.mark.parametrize("policy", [*ONLINE, FAST_DECAY])
def test_cluster_worker_matches_cache_simulator(policy, sequence, table):
    worker = run_cluster_worker(policy, sequence)
    sim = run_cache_sim(table, policy)
    assert worker == sim, (f"{policy}: cluster Worker ({summary(worker)}) and cache_sim "
                           f"({summary(sim)}) first differ at {first_difference(worker, sim)}")


class _TickOnLoad(LoRAStore):
    """The store's bookkeeping before this test: its clock also ticked on every load, so a miss
    aged the other entries by two accesses and cost-aware's decay ran faster than simulated."""

    def _load(self, adapter_id):
        self._seq += 1
        return super()._load(adapter_id)


def test_the_comparison_has_teeth(parity_config, adapter_bytes, steady_reads, sequence, table):
    """Different policies, a different budget or a different clock on the same sequence give
    different traces, so equality above means the implementations agree, not that the
    comparison cannot tell anything apart."""
    sims = {p: run_cache_sim(table, p) for p in ("lru", "lfu", FAST_DECAY)}
    assert sims["lru"] != sims["lfu"] != sims[FAST_DECAY] != sims["lru"]
    budget = K * adapter_bytes
    assert run_store(parity_config, "lfu", budget, sequence) != sims["lru"]
    assert run_cluster_worker("lru", sequence) != sims["lfu"]
    assert run_store(parity_config, "lru", budget + adapter_bytes, sequence) != sims["lru"]
    assert run_store(parity_config, FAST_DECAY, budget, sequence, store_cls=_TickOnLoad) != sims[FAST_DECAY]
