"""The simulator's load model and service-time profiles: reload overhead, exact sizes by name,
named profiles, a per-request constant and per-model profiles; config errors name the field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from trace_replay.simulator import SimConfig, simulate
from trace_replay.simulator.config import PROFILES, InferenceSpec
from trace_replay.simulator.workload import build_workload
from trace_replay.table import CONTROLNET, LORA, build_table

GB = 1e9

YAML = """
cluster: {gpus: 2, load_model: bandwidth, remote_gbps: 2.0}
components:
  reload_overhead_s: {base_model: 1.0, controlnet: 0.15, lora: 0.03}
  sizes_gb: {sd15: 2.13, sdxl: 6.94, cn-canny: 0.72}
inference:
  profile: h200-sd15
  fixed_s: 0.2
  per_model:
    sdxl: {s_per_step: 0.0634, fixed_s: 0.3, ref_pixels: 1048576}
"""


def table(times, bases, names=("sd15", "sdxl", "m2"), **cols):
    return build_table(len(times), time=np.array(times, float), base_model=np.array(bases, np.int32),
                       base_models=list(names), **cols)


def cfg_from(doc: dict | None = None, **sections) -> SimConfig:
    """The YAML above with sections updated (one level deep) by ``doc`` and keyword sections."""
    base = yaml.safe_load(YAML)
    for k, v in {**(doc or {}), **sections}.items():
        base.setdefault(k, {}).update(v)
    return SimConfig.model_validate(base)


def test_a_yaml_config_with_the_load_and_profile_fields_validates():
    cfg = cfg_from()
    assert cfg.components.reload_overhead_s.base_model == 1.0
    assert cfg.components.sizes_gb == {"sd15": 2.13, "sdxl": 6.94, "cn-canny": 0.72}
    inf = cfg.inference
    assert inf.profile == "h200-sd15" and inf.fixed_s == 0.2
    assert inf.per_model["sdxl"].s_per_step == 0.0634 and inf.per_model["sdxl"].ref_pixels == 1024 * 1024
    # the named profile set the reference fields the file did not give
    assert (inf.ref_runtime_s, inf.ref_steps, inf.batch_exponent) == (0.6587, 25, 0.651)
    # and a dump reads back to the same config
    assert SimConfig.model_validate(json.loads(cfg.model_dump_json())) == cfg


def test_a_named_profile_leaves_fields_given_explicitly_alone():
    inf = InferenceSpec(profile="h200-sdxl", ref_steps=50)
    assert inf.ref_steps == 50 and inf.ref_runtime_s == PROFILES["h200-sdxl"]["ref_runtime_s"]
    assert inf.ref_pixels == inf.default_pixels == 1024 * 1024
    assert InferenceSpec() == InferenceSpec(profile="diffserve-sd15")  # the default, unchanged numbers
    assert InferenceSpec().ref_runtime_s == 1.78


@pytest.mark.parametrize("doc,field", [
    ({"components": {"reload_overhead_s": {"lora": -0.1}}}, "components.reload_overhead_s.lora"),
    ({"components": {"reload_overhead_s": {"vae": 0.1}}}, "components.reload_overhead_s.vae"),
    ({"components": {"sizes_gb": {"sd15": 0.0}}}, "components.sizes_gb"),
    ({"inference": {"profile": "a100-sd15"}}, "inference.profile"),
    ({"inference": {"fixed_s": -1.0}}, "inference.fixed_s"),
    ({"inference": {"per_model": {"sdxl": {"s_per_step": 0.0}}}}, "inference.per_model.sdxl.s_per_step"),
    ({"inference": {"per_model": {"sdxl": {"steps": 3}}}}, "inference.per_model.sdxl"),
])
def test_bad_values_give_errors_naming_the_field(doc, field):
    with pytest.raises(ValidationError) as err:
        cfg_from(doc)
    assert field in str(err.value)


def test_sizes_by_name_override_the_random_range():
    cfg = cfg_from()
    t = build_table(3, time=np.array([0.0, 1.0, 2.0]), base_model=np.array([0, 1, 2], np.int32),
                    base_models=["sd15", "sdxl", "m2"], adapter_offsets=np.array([0, 1, 1, 1]),
                    adapter_kind=np.array([CONTROLNET], np.int8), adapter_id=np.array([0], np.int32),
                    controlnet_ids=["cn-canny"])
    wl, notes = build_workload(t, cfg)
    size = dict(zip(wl.key_names, wl.key_size))
    assert size["sd15"] == 2.13 * GB and size["sdxl"] == 6.94 * GB and size["cn-canny"] == 0.72 * GB
    assert 2 * GB <= size["m2"] <= 7 * GB  # not named: the seeded range
    assert any("3 of 3 components.sizes_gb names" in n for n in notes)


def test_service_time_per_model_and_global_formula_with_the_constant():
    cfg = cfg_from(inference={"jitter_cv": 0.0})
    steps = np.array([25, 50, 25, 30], np.int32)
    images = np.array([1, 1, 4, 2], np.int32)
    t = table([0.0, 1.0, 2.0, 3.0], [1, 1, 0, 2], steps=steps, images=images)
    wl, _ = build_workload(t, cfg)
    px = 512 * 512  # the table has no size column: default_pixels (SD 1.5's 512x512 under h200-sd15)
    # sdxl, per_model: 0.3 + 0.0634 x steps x (pixels / 1024^2) x images^0.651
    sdxl = 0.3 + 0.0634 * steps[:2] * (px / 1024 ** 2)
    np.testing.assert_allclose(wl.infer_s[:2], sdxl)
    # sd15 and m2, the global h200-sd15 profile: 0.2 + 0.6587 x steps / 25 x images^0.651
    glob = 0.2 + 0.6587 * steps[2:] / 25 * images[2:].astype(float) ** 0.651
    np.testing.assert_allclose(wl.infer_s[2:], glob)
    np.testing.assert_allclose(wl.expect_infer_s, wl.infer_s)  # no jitter: the mean is the sample


def test_controlnet_and_lora_factors_multiply_the_per_model_time():
    cfg = cfg_from(inference={"jitter_cv": 0.0})
    t = build_table(1, time=np.array([0.0]), base_model=np.array([1], np.int32), base_models=["sd15", "sdxl"],
                    steps=np.array([25], np.int32), adapter_offsets=np.array([0, 2]),
                    adapter_kind=np.array([CONTROLNET, LORA], np.int8), adapter_id=np.array([0, 0], np.int32),
                    controlnet_ids=["cn"], lora_ids=["l"])
    wl, _ = build_workload(t, cfg)
    inf = cfg.inference
    expect = 0.3 + 0.0634 * 25 * 0.25 * (1 + inf.controlnet_overhead) * (1 + inf.lora_overhead)
    assert wl.infer_s[0] == pytest.approx(expect)


def test_jitter_keeps_the_profile_mean_as_the_expectation():
    cfg = cfg_from(inference={"jitter_cv": 0.3})
    n = 20000
    wl, _ = build_workload(table(np.arange(n, dtype=float).tolist(), [0] * n), cfg)
    assert np.all(wl.expect_infer_s == wl.expect_infer_s[0])
    assert wl.infer_s.mean() == pytest.approx(wl.expect_infer_s[0], rel=0.01)


def test_reload_from_host_memory_pays_the_copy_not_the_build():
    # 5 GB of GPU holds one model: sdxl (6.94 GB) does not fit, so use sd15 (2.13 GB) and m2 (4 GB):
    # m2 evicts sd15, which comes back from the host tier: 2.13 GB at 12 GB/s, no build overhead
    # (the host tier keeps the built pipeline; ../shared/data/gpu: 0.043 s pinned copy vs 1.38 s build)
    cfg = cfg_from({"cluster": {"gpus": 1, "gpu_model_gb": 5.0, "disk_gb": 0.0},
                    "components": {"sizes_gb": {"sd15": 2.13, "m2": 4.0}}})
    res = simulate(table([0, 30, 60], [0, 2, 0]), "lru", cfg)
    load = res.records.load_s
    assert load[0] == pytest.approx(1.0 + 2.13 / 2.0)  # cold, bandwidth mode: overhead + size / 2 GB/s
    assert load[1] == pytest.approx(1.0 + 4.0 / 2.0)
    assert load[2] == pytest.approx(2.13 / 12.0)  # host -> GPU at 12 GB/s only
    # from local disk the pipeline is built again: disk and PCIe bandwidth plus the overhead
    disk = cfg_from({"cluster": {"gpus": 1, "gpu_model_gb": 5.0, "host_gb": 0.0, "disk_gb": 100.0},
                     "components": {"sizes_gb": {"sd15": 2.13, "m2": 4.0}}})
    res = simulate(table([0, 30, 60], [0, 2, 0]), "lru", disk)
    assert res.records.load_s[2] == pytest.approx(1.0 + 2.13 / 2.0 + 2.13 / 12.0)


@pytest.mark.parametrize("swap", [None, 0.004])
def test_a_lora_from_host_memory_still_pays_its_slot_swap(swap):
    from trace_replay.simulator.engine import tier_costs
    # overheads: base 1.0 s, ControlNet 0.15 s, LoRA 0.03 s; the swap alone, when measured
    cfg = cfg_from({"cluster": {"gpus": 1}, "components": {"reload_overhead_s": {"lora_swap": swap}}})
    t = build_table(1, time=np.array([0.0]), base_model=np.array([0], np.int32), base_models=["sd15"],
                    steps=np.array([25], np.int32), adapter_offsets=np.array([0, 2]),
                    adapter_kind=np.array([CONTROLNET, LORA], np.int8), adapter_id=np.array([0, 0], np.int32),
                    controlnet_ids=["cn"], lora_ids=["l"])
    wl, _ = build_workload(t, cfg)
    cost = tier_costs(wl, cfg)
    over_host = cost[:, 1] - wl.key_size / (cfg.cluster.pcie_gbps * 1e9)
    by_kind = dict(zip(wl.key_kind.tolist(), over_host.tolist()))
    assert by_kind == pytest.approx({CONTROLNET: 0.0, LORA: 0.03 if swap is None else swap, 2: 0.0})
    from_disk = dict(zip(wl.key_kind.tolist(), cost[:, 2].tolist()))
    assert from_disk[LORA] > 0.03  # from below the host tier: the whole overhead, not the swap


def test_a_remote_load_in_bandwidth_mode_scales_with_the_components_size():
    cfg = cfg_from({"cluster": {"gpus": 1, "gpu_model_gb": 100.0},
                    "components": {"sizes_gb": {"sd15": 2.0, "sdxl": 8.0, "m2": 4.0},
                                   "reload_overhead_s": {"base_model": 0.5}}})
    res = simulate(table([0, 100, 200], [0, 1, 2]), "lru", cfg)
    np.testing.assert_allclose(res.records.load_s, [0.5 + 2.0 / 2.0, 0.5 + 8.0 / 2.0, 0.5 + 4.0 / 2.0])


def test_sampled_remote_loads_are_end_to_end_and_pay_no_extra_overhead():
    # GenTD26-style sampled loads (here the exponential fallback) already include the overhead
    cfg = cfg_from({"cluster": {"gpus": 1, "load_model": "gentd26"}})
    wl, _ = build_workload(table([0.0], [0]), cfg)
    res = simulate(table([0.0], [0]), "lru", cfg, workload=wl)
    assert res.records.load_s[0] == wl.load_pool[2][0]
    assert wl.mean_load_s[2] == cfg.components.base_load_s  # the distribution's mean, not the draws'


def test_cli_table_shows_active_gpu_seconds_beside_violations(capsys):
    from tests.trace_fixtures import FIX
    from trace_replay.simulator.cli import main

    rc = main(["--trace", str(FIX / "katz_small.json"), "--format", "katz", "--policies", "lru",
               "--gpus", "2", "--data-dir", "none"])
    assert rc == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header.index("gpu_active_seconds") == header.index("slo_violation_rate") + 1


def _contention_run(contention: float, per_host: int, n: int = 12, model: str = "at-start", records=False,
                    stretch: list | None = None, slots: int = 0):
    """n requests 0.3 s apart for three bases on three GPUs, no loads (zero overhead, tiny sizes),
    1 s of compute each: (start, duration, others busy at the start) per request."""
    step = {"s_per_step": 0.5, "fixed_s": 0.0, "ref_pixels": 4096}
    cfg = SimConfig.model_validate({
        "cluster": {"gpus": 3, "load_model": "bandwidth", "remote_gbps": 1e6, "contention_model": model,
                    "replicas_per_host": per_host, "host_contention": contention, "host_stretch": stretch or [],
                    "compute_slots": slots},
        "components": {"reload_overhead_s": {"base_model": 0, "controlnet": 0, "lora": 0},
                       "base_gb": [1e-9, 1e-9]},
        "inference": {"default_pixels": 4096, "default_steps": 2, "jitter_cv": 0.0,
                      "per_model": {x: step for x in ("a", "b", "c")}}})
    times = np.arange(n) * 0.3
    res = simulate(table(times, np.arange(n) % 3, names=("a", "b", "c")), "lru", cfg, data_dir=None)
    start, finish, worker = res.records.start, res.records.finish, res.records.worker
    busy = np.array([np.count_nonzero((start < start[i]) & (finish > start[i]) & (worker != worker[i])
                                      & (worker // per_host == worker[i] // per_host)) for i in range(n)])
    return (finish - start, busy) if not records else res.records


def test_replicas_sharing_a_host_slow_each_other_down():
    dur, _ = _contention_run(0.0, 3)
    assert np.allclose(dur, 1.0)  # no contention: each replica has its own processors
    dur, busy = _contention_run(0.25, 3)
    assert busy.max() >= 1  # the workload does overlap
    assert np.allclose(dur, 1.0 + 0.25 * busy)  # stretched by the replicas busy at its start
    dur, _ = _contention_run(0.25, 1)  # one replica per host (a GPU cluster): nothing shared
    assert np.allclose(dur, 1.0)
    with pytest.raises(ValidationError, match="host_contention"):
        SimConfig.model_validate({"cluster": {"host_contention": -0.1}})


def test_shared_contention_gives_every_job_exactly_its_work():
    """contention_model 'shared': between any two starts or finishes on the host, each running job
    progresses at 1 / (1 + c x (m - 1)) with m jobs running; over its life that adds up to its 1 s
    of uncontended compute, however its neighbours came and went."""
    c = 0.25
    rec = _contention_run(c, 3, n=30, model="shared", records=True)
    start, finish = rec.start, rec.finish
    edges = np.unique(np.concatenate([start, finish]))
    done = np.zeros(start.size)
    for lo, hi in zip(edges[:-1], edges[1:]):
        running = (start <= lo) & (finish >= hi)
        m = np.count_nonzero(running)
        if m:
            done[running] += (hi - lo) / (1 + c * (m - 1))
    assert np.allclose(done, 1.0)


def _most_at_once(start: np.ndarray, finish: np.ndarray) -> int:
    return max(np.count_nonzero((start <= t) & (finish > t)) for t in start)


@pytest.mark.parametrize("slots", [1, 2])
def test_compute_slots_cap_the_jobs_a_host_runs_at_once(slots):
    """ClusterSpec.compute_slots: three replicas on one host, requests 0.3 s apart, 1 s of compute
    each. Without slots all three run at once (and stretch); with k slots never more than k do, a
    waiting request starts the moment one frees, and each job runs at the stretch of the k or fewer
    running beside it."""
    free = _contention_run(0.25, 3, n=30, model="shared", records=True)
    assert _most_at_once(free.start, free.finish) == 3
    rec = _contention_run(0.25, 3, n=30, model="shared", records=True, slots=slots)
    start, finish = rec.start, rec.finish
    assert np.all(rec.completions == 1)
    assert _most_at_once(start, finish) == slots
    waited = start > np.arange(30) * 0.3 + 1e-9
    assert waited.any()
    # a waiting request started when a job on the host finished
    assert all(np.isclose(finish, s).any() for s in start[waited])
    edges = np.unique(np.concatenate([start, finish]))  # 1 s of work at 1 / (1 + 0.25 (m - 1))
    done = np.zeros(start.size)
    for lo, hi in zip(edges[:-1], edges[1:]):
        running = (start <= lo) & (finish >= hi)
        if running.any():
            done[running] += (hi - lo) / (1 + 0.25 * (np.count_nonzero(running) - 1))
    assert np.allclose(done, 1.0)
    with pytest.raises(ValidationError, match="compute_slots"):
        SimConfig.model_validate({"cluster": {"compute_slots": -1}})


@pytest.mark.parametrize("model", ["at-start", "shared"])
def test_a_measured_stretch_replaces_the_line(model):
    """host_stretch (t2i profile's per busy count): two busy replicas x1.1, three x2.0, where the
    line through host_contention 0.25 would say x1.25 and x1.5."""
    stretch = [1.0, 1.0, 1.1, 2.0]  # by busy count, itself included
    rec = _contention_run(0.25, 3, n=30, model=model, records=True, stretch=stretch[2:])
    start, finish, worker = rec.start, rec.finish, rec.worker
    if model == "at-start":  # fixed by the replicas busy when it starts
        busy = np.array([np.count_nonzero((start < start[i]) & (finish > start[i]) & (worker != worker[i]))
                         for i in range(start.size)])
        assert set(busy.tolist()) >= {0, 1, 2}  # every busy count occurs
        assert np.allclose(finish - start, np.array(stretch)[busy + 1])
    else:  # 1 s of work at 1 / stretch[m] while m run
        edges = np.unique(np.concatenate([start, finish]))
        done = np.zeros(start.size)
        for lo, hi in zip(edges[:-1], edges[1:]):
            running = (start <= lo) & (finish >= hi)
            if running.any():
                done[running] += (hi - lo) / stretch[np.count_nonzero(running)]
        assert np.allclose(done, 1.0)
    with pytest.raises(ValidationError, match="one value per busy count 2..3"):
        SimConfig.model_validate({"cluster": {"replicas_per_host": 3, "host_stretch": [1.1]}})
    with pytest.raises(ValidationError, match="host_stretch values"):
        SimConfig.model_validate({"cluster": {"replicas_per_host": 2, "host_stretch": [0.0]}})


def test_a_load_on_a_shared_host_is_slowed_and_recorded_slowed():
    # a live replica measures its loads while its neighbours compute; so does the simulator
    cfg = cfg_from({"cluster": {"gpus": 2, "replicas_per_host": 2, "host_contention": 0.5, "gpu_model_gb": 100.0}})
    res = simulate(table([0.0, 0.1], [0, 1]), "lru", cfg)  # the second starts next to the first, busy
    cold = 1.0 + 2.13 / 2.0  # sd15's cold load (bandwidth mode), as the first request pays it
    load = res.records.load_s
    assert load[0] == pytest.approx(cold) and load[1] > 1.0
    alone = simulate(table([0.0], [1]), "lru", cfg).records.load_s[0]
    assert load[1] == pytest.approx(alone * 1.5)  # one busy neighbour: x (1 + 0.5)
    assert res.summary["load_seconds"] == pytest.approx(load.sum())  # the totals agree


@pytest.mark.parametrize("contention,loads", [(0.0, 2), (1.0, 1)])
def test_the_policy_router_prices_replicas_sharing_a_host(contention, loads):
    """Two GPUs on one host, each busy neighbour doubling a job (host_contention 1). The second
    request arrives while the first computes for 5 s: a 1 s load on the idle GPU beats the wait
    unless the router knows that GPU's load and compute would run beside the busy one."""
    from trace_replay.simulator import PolicySetSpec

    cfg = cfg_from({"cluster": {"gpus": 2, "replicas_per_host": 2, "host_contention": 1.0, "remote_gbps": 1000.0},
                    "components": {"sizes_gb": {"sd15": 0.001}},
                    "inference": {"per_model": {"sd15": {"s_per_step": 0.2, "fixed_s": 0.0, "ref_pixels": 262144}}}})
    spec = PolicySetSpec(name="contended", routing="policy",
                         routing_args={"policy": "least-expected-latency", "band_pools": False,
                                       "host_contention": contention})
    res = simulate(table([0.0, 0.5], [0, 0], steps=np.array([25, 25], np.int32)), spec, cfg)
    assert res.summary["loads_by_kind"]["base_model"] == loads


@pytest.mark.parametrize("model,finish", [("at-start", (2.0, 2.5)), ("shared", (3.0, 2.5))])
def test_contention_at_start_or_shared_as_neighbours_come_and_go(model, finish):
    """Two GPUs on one host, each busy neighbour doubling a job (host_contention 1): a 2 s job
    starts alone at 0, a 1 s job beside it at 0.5. 'at-start' fixes each job's stretch when it
    starts (the first stays 2 s, the second runs 2 s); 'shared' slows the first too from 0.5, both
    at half speed until the second ends at 2.5, then the first's last 0.5 s alone: 3.0."""
    cfg = cfg_from({"cluster": {"gpus": 2, "replicas_per_host": 2, "host_contention": 1.0, "remote_gbps": 1e9,
                                "contention_model": model},
                    "components": {"sizes_gb": {"sd15": 1e-9, "sdxl": 1e-9}, "reload_overhead_s": {"base_model": 0.0}},
                    "inference": {"jitter_cv": 0.0, "fixed_s": 0.0, "per_model": {
                        m: {"s_per_step": 0.1, "fixed_s": 0.0, "ref_pixels": 262144} for m in ("sd15", "sdxl")}}})
    res = simulate(table([0.0, 0.5], [0, 1], steps=np.array([20, 10], np.int32)), "lru", cfg)
    assert sorted(res.records.worker.tolist()) == [0, 1]  # side by side
    assert res.records.finish.tolist() == pytest.approx(list(finish), abs=1e-6)
    busy = res.records.finish - res.records.start
    assert res.summary["gpu_busy_fraction"] == pytest.approx(busy.sum() / (2 * max(finish)), abs=1e-6)
