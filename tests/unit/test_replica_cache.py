"""The replica cache on the tiny real models: ModelCache over PipelineEngine, then BaseModel
(constructed directly, outside Ray) with its routing/autoscaling stats and coordinator loop."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from deployments import replica_control
from deployments.base_model import BaseModel
from deployments.lora_store import LoRAStore
from deployments.model_cache import CacheBudgetError, ModelCache
from deployments.pipeline_engine import EngineModels, PipelineEngine
from deployments.spec import GenerationResult, GenerationSpec
from policies.eviction import EVICTION
from policies.snapshot import GPU, HOST, SHARED

MIB = 1 << 20
S1_KEYS = {"t", "queue_len", "busy_s", "tiers", "loading", "gpu_free_bytes", "host_free_bytes",
           "load_cost_s", "pool", "service_s", "compute_s", "compute_per_step_s"}
S2_KEYS = {"queue_len", "loads_in_progress", "busy_s", "requests_total", "service_s",
           "resident_bytes", "cache_value", "cascade_replicas"}


def _spec(**overrides) -> GenerationSpec:
    values = dict(prompt="a small boat", base_model="tiny-sd-light", width=32, height=32, steps=2,
                  guidance_scale=5.0, seed=7)
    values.update(overrides)
    return GenerationSpec(**values)


def _config(demo_config, **control):
    """The demo config with a device budget for one tiny pipeline and a ControlNet, not two
    pipelines (light ~6.6 MiB, heavy ~9.5 MiB, a ControlNet ~1.6 MiB measured)."""
    values = {"gpu_budget_bytes": 12 * MIB, "host_budget_bytes": 32 * MIB, **control}
    return demo_config.model_copy(update={"control": demo_config.control.model_copy(update=values)})


@pytest.fixture
def control_image() -> np.ndarray:
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = 255
    return image


class CountingEngine(PipelineEngine):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.disk_loads: list[str] = []

    def load_pipeline(self, model_id):
        self.disk_loads.append(model_id)
        return super().load_pipeline(model_id)


def test_engine_models_through_the_cache_host_tier_reload_skips_from_pretrained(demo_config):
    engine = CountingEngine(_config(demo_config), device="cpu")
    source = EngineModels(engine)
    cache = ModelCache(source, 12 * MIB, 32 * MIB, EVICTION.create("cost-aware"))

    async def main():
        async with cache.use(["tiny-sd-light"]) as (light,):
            first = engine.generate(light, _spec()).images[0]
        assert cache.gpu_used() == source.size_of(light) <= cache.gpu_budget
        async with cache.use(["tiny-sd-heavy"]) as (heavy,):
            assert engine.generate(heavy, _spec(base_model="tiny-sd-heavy")).images[0].shape == (32, 32, 3)
        assert cache.tiers() == {"tiny-sd-light": HOST, "tiny-sd-heavy": GPU}
        assert cache.gpu_used() <= cache.gpu_budget and cache.host_used() <= cache.host_budget
        async with cache.use(["tiny-sd-light"]) as (again,):
            assert again is light and np.array_equal(engine.generate(again, _spec()).images[0], first)
        assert engine.disk_loads == ["tiny-sd-light", "tiny-sd-heavy"]
        counters = cache.counters()
        assert counters["hits"]["host"] == 1 and counters["misses"]["disk"] == 2
        assert counters["loads"]["base"] == {"host": 1, "disk": 2, "remote": 0}
        costs = cache.load_cost_s("tiny-sd-light")
        assert costs[GPU] == 0.0 and costs[HOST] < costs[2] == costs[3]

    asyncio.run(main())


@pytest.fixture(scope="module")
def replica(demo_config):
    """A coordinated BaseModel outside Ray, its LoRA store called in-process, and the one event
    loop the replica's cache lives on."""
    class InProcess:  # stands in for a Serve handle: handle.get.remote(x) is awaitable
        def __init__(self, store):
            self.get = type("M", (), {"remote": staticmethod(store.get)})()

    config = _config(demo_config)
    with asyncio.Runner() as runner:
        model = BaseModel(config, lora_store=InProcess(LoRAStore(config)))
        model.control.start = lambda: None  # these tests call report_once themselves
        yield model, runner


def test_generations_then_routing_and_autoscaling_stats(replica, control_image):
    model, runner = replica
    results = [runner.run(model.generate(spec, images)) for spec, images in [
        (_spec(), None), (_spec(seed=8), None),
        (_spec(base_model="tiny-sd-heavy", controlnets=(("tiny-cn-canny", 1.0),),
               loras=(("tiny-lora-ink", 1.0),)), [control_image])]]
    assert all(r.images[0].shape == (32, 32, 3) and r.replica is None for r in results)
    # load_s includes the cache's load: the first request loaded the pipeline, the second hit
    assert results[0].timings["load_s"] > results[1].timings["load_s"]
    cache = model.cache
    assert cache.gpu_used() <= cache.gpu_budget and cache.host_used() <= cache.host_budget

    stats = runner.run(model.record_routing_stats())
    assert set(stats) == S1_KEYS
    # the running means per step, by base model and ControlNet count (two light requests, one
    # heavy with a ControlNet), are kept; routers see them only with control.per_model_compute
    assert stats["compute_per_step_s"] == {} and not model.config.control.per_model_compute
    per_step = model.control.per_step
    assert set(per_step) == {("tiny-sd-light", 0), ("tiny-sd-heavy", 1)}
    assert per_step[("tiny-sd-heavy", 1)] == pytest.approx(results[2].timings["inference_s"] / 2)
    assert stats["queue_len"] == 0 and stats["loading"] == [] and stats["pool"] == SHARED
    assert stats["tiers"] == {"tiny-sd-light": HOST, "tiny-sd-heavy": GPU, "tiny-cn-canny": GPU,
                              "tiny-lora-ink": GPU}  # the LoRA sits in heavy's slots
    assert stats["gpu_free_bytes"] == cache.gpu_budget - cache.gpu_used() >= 0
    assert stats["host_free_bytes"] == cache.host_budget - cache.host_used() >= 0
    loras = set(model.config.ids("lora"))
    assert set(stats["load_cost_s"]) == {"tiny-sd-light", "tiny-sd-heavy", "tiny-cn-canny", "tiny-cn-edges"} | loras
    ink = stats["load_cost_s"]["tiny-lora-ink"]  # a swap from the replica's host tier < a store fetch
    assert ink[HOST] < ink[2] == ink[3] and ink[2] - ink[HOST] == pytest.approx(model.control.adapter_fetch_s)
    for costs in stats["load_cost_s"].values():
        assert len(costs) == 4 and costs[GPU] == 0.0 and all(c >= 0 for c in costs)
    assert stats["load_cost_s"]["tiny-sd-light"][2] == cache.costs.means[("tiny-sd-light", 2)][1]  # measured
    assert stats["busy_s"] == 0.0 and stats["service_s"] > 0

    auto = runner.run(model.record_autoscaling_stats())
    assert set(auto) == S2_KEYS and all(type(v) is float for v in auto.values())
    assert auto["requests_total"] == 3.0 and auto["queue_len"] == 0.0 and auto["loads_in_progress"] == 0.0
    assert auto["resident_bytes"] == cache.gpu_used() and auto["service_s"] > 0 and auto["cache_value"] > 0

    state = runner.run(model.cache_state())
    assert set(state["gpu"]) == {"tiny-sd-heavy", "tiny-cn-canny"} and set(state["host"]) == {"tiny-sd-light"}
    assert state["counters"]["misses"]["disk"] == 3 and state["policies"] == "coordinator"


class FakeCoordinator:
    """Answers report.remote(...) like an actor handle; records what it was sent."""

    def __init__(self, actions):
        self.actions, self.reports, self.hang, self.dead = actions, [], False, False

        async def report(replica_id, report):
            if self.dead:
                from ray.exceptions import ActorDiedError
                raise ActorDiedError()
            if self.hang:
                await asyncio.sleep(60)
            self.reports.append((replica_id, report))
            return self.actions

        self.report = type("M", (), {"remote": staticmethod(report)})()


def test_report_loop_applies_actions_and_survives_the_coordinator_going_away(replica, control_image, monkeypatch,
                                                                            caplog):
    model, runner = replica
    control = model.control
    coordinator = FakeCoordinator({"pins": ["tiny-sd-heavy", "tiny-lora-ink"], "prefetch": ["tiny-cn-edges"],
                                   "pool": 1})
    control._resolve = lambda: coordinator
    # heavy with canny: the device holds both whatever the module's earlier tests left there
    runner.run(model.generate(_spec(base_model="tiny-sd-heavy", controlnets=(("tiny-cn-canny", 1.0),)),
                              [control_image]))
    assert runner.run(control.report_once())
    replica_id, report = coordinator.reports[-1]
    assert replica_id == "local"
    assert {"t", "tiers", "queue_len", "loading", "gpu_free_bytes", "host_free_bytes", "gpu_budget_bytes",
            "host_budget_bytes", "load_cost_s", "served", "loads", "evicted", "prefetch_hits"} <= set(report)
    assert report["served"][-1]["base"] == "tiny-sd-heavy" and report["gpu_budget_bytes"] == 12 * MIB
    assert report["sizes"]["tiny-sd-heavy"] == model.cache.state()["gpu"]["tiny-sd-heavy"]["bytes"]
    assert model.cache.pins == {"tiny-sd-heavy"}  # LoRAs are not this cache's to pin
    # both are placed when idle; only the prefetch is the bandit's (a pin's load is a placement)
    assert control.prefetch_wanted == ["tiny-sd-heavy", "tiny-cn-edges"]
    assert control.placements == {"tiny-sd-heavy"}
    assert runner.run(model.record_routing_stats())["pool"] == 1

    async def prefetch():
        control.maybe_prefetch()
        await control._prefetch_task
    held = model.cache.tiers()
    runner.run(prefetch())
    # heavy (pinned) and canny leave less than a ControlNet free: a prefetch never evicts
    assert model.cache.gpu_budget - model.cache.gpu_used() < model.cache.size_estimate("tiny-cn-edges")
    assert model.cache.tiers() == held and model.cache.counters()["prefetch"]["started"] == 0

    assert runner.run(control.report_once())
    assert coordinator.reports[-1][1]["served"] == []  # delivered events are not sent twice

    # light does not fit beside pinned heavy: the request is served, the pin gives way (counted)
    overridden = model.cache.counters()["pins_overridden"]
    assert runner.run(model.generate(_spec())).images[0].shape == (32, 32, 3)
    assert model.cache.counters()["pins_overridden"] == overridden + 1
    assert model.cache.tiers()["tiny-sd-light"] == GPU and model.cache.tiers()["tiny-sd-heavy"] != GPU

    # away: the actor dies, then the lookup fails (being recreated), then a new one hangs;
    # requests go on, each outage is logged once, and its pins go after a few failed reports
    monkeypatch.setattr(replica_control, "REPORT_TIMEOUT_S", 0.2)

    def gone():
        raise ValueError("Failed to look up actor 'coordinator'")
    coordinator.dead = True
    with caplog.at_level(logging.WARNING, logger="deployments.replica_control"):
        assert not runner.run(control.report_once())
        control._resolve = gone
        assert not runner.run(control.report_once())
        assert model.cache.pins == {"tiny-sd-heavy"}
        assert not runner.run(control.report_once())
        assert model.cache.pins == frozenset() and control.prefetch_wanted == []
        assert runner.run(model.generate(_spec())).images[0].shape == (32, 32, 3)
    assert sum("coordinator unreachable" in r.message for r in caplog.records) == 1
    assert not runner.run(model.cache_state())["coordinator"]["reachable"]
    coordinator = FakeCoordinator({"pins": [], "prefetch": [], "pool": 0})
    control._resolve = lambda: coordinator
    coordinator.hang = True
    assert not runner.run(control.report_once())
    coordinator.hang = False
    assert runner.run(control.report_once())  # back: the outage's requests arrive now
    # back: what was served meanwhile (the failed light request included) arrives now
    assert [s["base"] for s in coordinator.reports[-1][1]["served"]] == ["tiny-sd-light"] * 2
    assert model.cache.pins == frozenset() and model.control.pool == 0
    assert model.cache.gpu_used() <= model.cache.gpu_budget


def test_a_model_over_the_budget_fails_naming_it(demo_config):
    config = _config(demo_config, gpu_budget_bytes=2 * MIB)

    async def main():
        model = BaseModel(config)
        with pytest.raises(CacheBudgetError, match=r"'tiny-sd-light'.*control.gpu_budget_bytes=2097152"):
            await model.generate(_spec())
        assert model.control.queue_len == 0 and model.cache.gpu_used() == 0

    asyncio.run(main())


def test_ray_default_keeps_serve_multiplexed_and_publishes_the_same_shapes(demo_config):
    config = _config(demo_config, policies="ray-default")

    async def main():
        model = BaseModel(config)
        assert model.cache is None and model.get_pipeline is not None
        stats = await model.record_routing_stats()
        auto = await model.record_autoscaling_stats()
        assert set(stats) == S1_KEYS and stats["tiers"] == {} and set(auto) == S2_KEYS
        assert all(type(v) is float for v in auto.values())

    asyncio.run(main())


def test_the_background_loop_reports_every_period_and_outlives_failures(demo_config):
    config = _config(demo_config, report_period_s=0.02)
    coordinator = FakeCoordinator({"pins": ["tiny-sd-light"], "prefetch": [], "pool": 2})
    lookups = []

    def resolve():
        lookups.append(1)
        if len(lookups) <= 2:
            raise ValueError("no coordinator yet")
        return coordinator

    async def main():
        control = replica_control.ReplicaControl(config, PipelineEngine(config, device="cpu"), dict,
                                                 resolve_coordinator=resolve)
        control.start()
        control.start()  # once only
        for _ in range(200):
            await asyncio.sleep(0.02)
            if len(coordinator.reports) >= 2:
                break
        assert len(coordinator.reports) >= 2 and not control._task.done()
        assert control.cache.pins == {"tiny-sd-light"} and control.pool == 2
        control._task.cancel()

    asyncio.run(main())


def test_busy_s_counts_each_requests_own_compute_and_the_running_ones_elapsed_time(demo_config):
    """With control.per_model_compute, the drain time a replica reports (policies.drain): the
    running request's expected compute less its elapsed time (at least a tenth of it once late),
    plus each queued request's expected compute from the running means per step of its base
    model, not the mean per request times the queue length."""
    control = replica_control.ReplicaControl(_config(demo_config, per_model_compute=True),
                                             PipelineEngine(demo_config, device="cpu"), dict)
    clock = [100.0]
    control.clock = lambda: clock[0]

    def served(spec, inference_s):
        with control.request(spec) as record:
            record(GenerationResult(images=[], timings={"inference_s": inference_s}))

    heavy, light = _spec(base_model="tiny-sd-heavy", steps=4), _spec(steps=2)
    served(heavy, 4.0)  # 1 s per step
    served(light, 0.2)  # 0.1 s per step
    assert control.expected_compute_s(heavy) == 4.0 and control.expected_compute_s(light) == pytest.approx(0.2)
    # a pipeline this replica never ran: its mean per request (EWMA of 4.0 and 0.2)
    assert control.expected_compute_s(_spec(base_model="tiny-sd-b00")) == pytest.approx(4.0 + 0.2 * (0.2 - 4.0))
    with control.request(heavy), control.request(light), control.request(_spec(steps=6)):
        assert control.busy_s() == pytest.approx(4.0 + 0.2 + 0.6)  # nothing computing yet
        control.computing(heavy)
        clock[0] += 1.5
        assert control.busy_s() == pytest.approx(2.5 + 0.2 + 0.6)
        clock[0] += 10.0  # heavy is late: a tenth of its expectation is still expected
        assert control.busy_s() == pytest.approx(0.4 + 0.2 + 0.6)
    assert control.busy_s() == 0.0 and not control._computing
    assert control.compute_table() == {"tiny-sd-heavy": {"0": 1.0}, "tiny-sd-light": {"0": pytest.approx(0.1)}}

    # control.per_model_compute off (the default): the mean per request x the queue, no per-model means
    control.config = _config(demo_config, per_model_compute=False)
    with control.request(heavy), control.request(light):
        control.computing(heavy)
        clock[0] += 1.5
        assert control.busy_s() == pytest.approx(2 * control.compute_s)
    assert control.compute_table() == {}


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_an_evicted_pipeline_waits_in_host_memory_and_comes_back(demo_config):
    import torch

    engine = CountingEngine(_config(demo_config), device="cuda")
    cache = ModelCache(EngineModels(engine), 12 * MIB, 32 * MIB, EVICTION.create("cost-aware"))

    def device_of(loaded):
        return next(loaded.pipe.unet.parameters()).device.type

    async def main():
        async with cache.use(["tiny-sd-light"]) as (light,):
            first = engine.generate(light, _spec()).images[0]
        allocated = torch.cuda.memory_allocated()
        async with cache.use(["tiny-sd-heavy"]) as (heavy,):
            assert device_of(heavy) == "cuda" and device_of(light) == "cpu"
        async with cache.use(["tiny-sd-light"]) as (again,):
            assert again is light and device_of(again) == "cuda" and device_of(heavy) == "cpu"
            assert np.array_equal(engine.generate(again, _spec()).images[0], first)
        assert engine.disk_loads == ["tiny-sd-light", "tiny-sd-heavy"]
        assert torch.cuda.memory_allocated() <= allocated + MIB  # heavy's weights left the device

    asyncio.run(main())


def test_concurrent_requests_for_more_pipelines_than_fit_all_succeed_within_budget(demo_config):
    """The budget holds one pipeline at a time: requests wait for the one in use to be released
    (holding nothing meanwhile), evicted pipelines come back from host memory, never from disk."""
    config = _config(demo_config)

    async def main():
        model = BaseModel(config)
        model.control.start = lambda: None
        cache = model.cache
        peaks, sources = [], []
        original = cache._run_load

        async def watched(entry, prefetch):  # each load starts with its bytes reserved
            peaks.append(cache.gpu_used())
            sources.append(entry.load_from)
            await original(entry, prefetch)
        cache._run_load = watched
        specs = [_spec(base_model="tiny-sd-light" if i % 2 else "tiny-sd-heavy", seed=i) for i in range(6)]
        results = [r for _ in range(2) for r in await asyncio.gather(*(model.generate(s) for s in specs))]
        assert all(r.images[0].shape == (32, 32, 3) for r in results)
        assert max(peaks) <= cache.gpu_budget and cache.gpu_used() <= cache.gpu_budget
        counters = cache.counters()
        assert counters["misses"]["disk"] == 2 and counters["loads"]["base"]["disk"] == 2
        assert sources.count(HOST) == counters["hits"]["host"] >= 1
        assert counters["failures"] == {"budget": 0, "load": 0} and cache.in_use() == 0

    asyncio.run(main())


def test_adapter_host_tier_keeps_fetched_loras(replica):
    """A LoRA fetched once stays in the replica's adapter tier: used again on another pipeline
    (whose slots lack it), it is not fetched from the store again, and the tier reports it HOST
    once no resident pipeline's slot holds it."""
    model, runner = replica
    store = model.lora_store
    fetched = []
    get = store.get.remote
    store.get.remote = lambda a: fetched.append(a) or get(a)
    try:
        first = runner.run(model.generate(_spec(loras=(("tiny-lora-neon", 1.0),)), None))
        again = runner.run(model.generate(_spec(base_model="tiny-sd-heavy", loras=(("tiny-lora-neon", 1.0),)),
                                          None))
        runner.run(model.generate(_spec(loras=(("tiny-lora-pastel", 1.0),)), None))
    finally:
        store.get.remote = get
    assert fetched == ["tiny-lora-neon", "tiny-lora-pastel"]  # neon came from the tier the 2nd time
    # the store fetch is reported as its own part of load_s, and only when there was one
    assert 0 < first.timings["fetch_s"] <= first.timings["load_s"] and again.timings["fetch_s"] == 0.0
    tier = model.control.adapters
    assert {"tiny-lora-neon", "tiny-lora-pastel"} <= set(tier.held()) and tier.hits >= 1
    assert tier.used_bytes() <= tier.budget
    tiers = model.control.tiers()
    for a in tier.held():  # in a resident pipeline's slot: GPU; else the tier's HOST
        assert tiers[a] in (GPU, HOST)


def test_a_queued_request_loads_its_pipeline_while_another_request_runs(demo_config):
    """control.load_ahead: while the replica is busy, a queued request's missing pipeline loads
    (its acquire then takes that load over); one queued behind a request still lacking its own
    pipeline does not load ahead (it would take that request's room); and with load_ahead off,
    nothing loads before the replica is free."""
    async def main(load_ahead: bool):
        model = BaseModel(_config(demo_config, gpu_budget_bytes=24 * MIB, load_ahead=load_ahead))
        model.control.start = lambda: None
        cache = model.cache
        async with model._lock:  # a request runs
            light = asyncio.ensure_future(model.generate(_spec(base_model="tiny-sd-light")))
            for _ in range(60):  # a tiny pipeline loads in well under a second
                if cache.resident("tiny-sd-light"):
                    break
                await asyncio.sleep(0.05)
            loaded_while_busy = cache.resident("tiny-sd-light")
        await light
        # the replica is busy again, and the first queued request lacks its pipeline: the second
        # (whose pipeline would fit) must not take its place
        async with model._lock:
            model.control.in_flight.append((first := _spec(base_model="tiny-sd-heavy"), ["tiny-sd-heavy"]))
            second = asyncio.ensure_future(model.generate(_spec(base_model="tiny-sd-heavy", seed=3)))
            await asyncio.sleep(0.3)
            second_loaded = cache.loading() or cache.resident("tiny-sd-heavy")
            model.control.in_flight.remove((first, ["tiny-sd-heavy"]))
        await second
        return loaded_while_busy, second_loaded, cache.counters()["ahead"]

    loaded, second_loaded, ahead = asyncio.run(main(True))
    assert loaded and not second_loaded and ahead == {"started": 1, "used": 1, "wasted": 0}
    loaded, _, ahead = asyncio.run(main(False))
    assert not loaded and ahead["started"] == 0


def test_replicas_on_one_machine_compute_one_at_a_time_with_one_compute_slot(demo_config, tmp_path, monkeypatch):
    """control.compute_slots 1: two replicas (two BaseModels here, as two processes would be) never
    run a pipeline at the same time; the request that waited for the slot reports the wait as
    slot_s, inside its queue_s."""
    from deployments import compute_slots

    monkeypatch.setattr(compute_slots, "slots_dir", lambda slots: tmp_path / f"of-{slots}")
    config = _config(demo_config, compute_slots=1)

    async def main():
        models = [BaseModel(config) for _ in range(2)]
        spans = []
        for model in models:
            model.control.start = lambda: None
            run = model.engine.generate

            def timed(*args, run=run):
                started = time.perf_counter()
                try:
                    return run(*args)
                finally:
                    spans.append((started, time.perf_counter()))
            model.engine.generate = timed
        results = await asyncio.gather(*(m.generate(_spec(seed=i)) for i in range(2) for m in models))
        return spans, results

    spans, results = asyncio.run(main())
    spans.sort()
    assert len(spans) == 4 and all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    slot = [r.timings["slot_s"] for r in results]
    assert max(slot) > 0.01  # at least one request waited for the other replica's compute
    assert all(r.timings["queue_s"] >= s for r, s in zip(results, slot))
