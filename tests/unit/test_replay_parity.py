"""``t2i parity`` end to end against a scripted one-replica service whose costs are known.

The scripted server runs requests one at a time, FIFO, for steps x s_per_step each: exactly what
the simulator's ray-default set models for one GPU with no loads. With a profile stating those
costs, live and simulated latencies must agree; a wrong arrival time, step count or replica
count on either side would pull them apart (queueing amplifies any such error).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from app.cli import main as t2i
from tests.unit.replay_server import server  # noqa: F401  (the fixture)
from trace_replay.replay.parity import compare, live_policy_set, live_service, load_profile, side_by_side
from trace_replay.simulator.policy_sets import POLICY_SETS

S_PER_STEP = 0.04  # b0 and b1 default to 2 steps: 80 ms a request


def _config(tmp_path, replicas: int = 1, policies: str = "ray-default") -> str:
    doc = {"control": {"policies": policies, "gpu_budget_bytes": 8 << 20, "host_budget_bytes": 16 << 20},"models": [{"id": "b0", "kind": "base", "path": "b0", "default_steps": 2},
                      {"id": "b1", "kind": "base", "path": "b1", "default_steps": 2},
                      {"id": "l0", "kind": "lora", "path": "l0"},
                      {"id": "c0", "kind": "controlnet", "path": "c0"}],
           "deployments": {"base_model": {"num_replicas": replicas, "max_ongoing_requests": 100}},
           "cache": {"base_models_per_replica": 2}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _profile(tmp_path, s_per_step: float = S_PER_STEP) -> str:
    step = {"s_per_step": s_per_step, "fixed_s": 0.0, "ref_pixels": 4096}
    doc = {"inference": {"default_pixels": 4096, "jitter_cv": 0.0, "lora_overhead": 0.0,
                         "controlnet_overhead": 0.0, "per_model": {"b0": step, "b1": step}},
           "components": {"reload_overhead_s": {"base_model": 0.0, "controlnet": 0.0, "lora": 0.0},
                          "base_gb": [1e-6, 1e-6], "lora_gb": [1e-6, 1e-6], "controlnet_gb": [1e-6, 1e-6]},
           "cluster": {"load_model": "bandwidth", "remote_gbps": 1000.0}}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_live_and_simulated_agree_on_a_service_with_known_costs(server, tmp_path, capsys):  # noqa: F811
    from tests.trace_fixtures import FIX

    server.mode = ("serial", S_PER_STEP)
    # 9 requests at 10/s into an 80 ms server: it queues, so latencies depend on arrival times
    rc = t2i(["parity", "--trace", str(FIX / "katz_small.json"), "--format", "katz", "--url", server.url,
              "--config", _config(tmp_path), "--profile", _profile(tmp_path), "--arrival", "gamma",
              "--rate", "10", "--cv", "1.5", "--seed", "2", "--out", str(tmp_path / "p"), "--json",
              "--no-progress"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["live"]["requests"] == doc["sim"]["requests"] >= 5
    assert doc["gpus"] == 1 and doc["policy_set"]["max_models_per_replica"] == 2
    for key in ("latency_mean_s", "latency_p50_s", "latency_p95_s"):
        # HTTP and event-loop overhead are the only unmodelled costs (a few ms a request); before
        # the driver opened its connection ahead of the clock, the first request was ~25 ms late
        assert abs(doc["relative_error"][key]) < 0.2, (key, doc["live"][key], doc["sim"][key])
    assert (tmp_path / "p" / "parity.json").exists()
    # the recorded slice simulates again to the same prediction (benchmarks/live_resimulate.py)
    from deployments.config import load_config
    from trace_replay.replay.parity import sim_arrays
    from trace_replay.replay.parity_cli import resimulate
    from trace_replay.replay.report import slice_stats

    assert doc["slice"]["seed"] == 2 and doc["slice"]["rate"] == 10
    again, _, _, _ = resimulate(doc, load_config(_config(tmp_path)), _profile(tmp_path))
    assert slice_stats(*sim_arrays(again), doc["live_summary"]["slo_s"], 0) == pytest.approx(doc["sim"])
    with pytest.raises(ValueError, match="no 'slice'"):
        resimulate({k: v for k, v in doc.items() if k != "slice"}, load_config(_config(tmp_path)), _profile(tmp_path))


def test_live_service_seconds_correct_a_wrong_profile(server, tmp_path, capsys):  # noqa: F811
    """A profile that says half the real cost mispredicts the queue; the second simulation, each
    request holding the server for the seconds it computed live, does not (and would not if those
    seconds held the queue wait: the scripted server reports its lock's wait as queue_s, as
    BaseModel does)."""
    from tests.trace_fixtures import FIX

    server.mode = ("serial", S_PER_STEP)
    rc = t2i(["parity", "--trace", str(FIX / "katz_small.json"), "--format", "katz", "--url", server.url,
              "--config", _config(tmp_path), "--profile", _profile(tmp_path, S_PER_STEP / 2), "--arrival",
              "gamma", "--rate", "10", "--cv", "1.5", "--seed", "2", "--out", str(tmp_path / "p"), "--json",
              "--no-progress"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["relative_error"]["latency_mean_s"] < -0.3, (doc["live"], doc["sim"])  # the profile is wrong
    for key in ("latency_mean_s", "latency_p50_s", "latency_p95_s"):
        assert abs(doc["live_service"]["relative_error"][key]) < 0.2, (key, doc["live"][key],
                                                                      doc["sim_live_service"][key])
    # the same seconds read back from records.csv simulate to the same prediction
    from deployments.config import load_config
    from trace_replay.replay.compare import read_records
    from trace_replay.replay.parity import sim_arrays
    from trace_replay.replay.parity_cli import resimulate
    from trace_replay.replay.report import slice_stats

    again, _, _, outside = resimulate(doc, load_config(_config(tmp_path)), _profile(tmp_path, S_PER_STEP / 2),
                                      live=read_records(tmp_path / "p"))
    assert slice_stats(*sim_arrays(again, outside), doc["live_summary"]["slo_s"], 0) == pytest.approx(
        doc["sim_live_service"], rel=1e-4)


def test_live_service_splits_compute_from_outside():
    compute, outside = live_service(inference_s=[0.4, 1.5, np.nan, 0.5], sent_s=[0.0, 1.0, 2.0, 3.0],
                                    done_s=[1.0, 4.0, np.nan, 3.5], queue_s=[0.2, 1.0, 0.0, np.nan],
                                    load_s=[0.3, np.nan, 0.0, 0.0], completed=[True, True, False, True])
    assert compute[[0, 1, 3]] == pytest.approx([0.4, 1.5, 0.5]) and np.isnan(compute[2])
    assert outside[[0, 1, 3]] == pytest.approx([0.1, 0.5, 0.0]) and np.isnan(outside[2])


def test_side_by_side_prints_each_prediction_in_its_own_columns():
    live = {"latency_p50_s": 2.0, "slo_violation_rate": 0.0, "requests": 10}
    sims = [{"latency_p50_s": 3.0, "slo_violation_rate": 0.1, "requests": 10},
            {"latency_p50_s": 2.2, "slo_violation_rate": 0.0, "requests": 10}]
    text = side_by_side(live, [("sim", sims[0], compare(live, sims[0])),
                               ("sim | live service", sims[1], compare(live, sims[1]))])
    lines = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert lines["latency_p50_s"].split()[1:] == ["2.000", "3.000", "+50.0%", "2.200", "+10.0%"]
    assert lines["slo_violation_rate"].split()[1:] == ["0.00%", "10.00%", "0.00%"]  # no ratio of a 0
    # the columns line up: the second prediction's value ends where its header does
    header = text.splitlines()[0]
    assert lines["slo_violation_rate"].rindex("0.00%") + 5 == lines["latency_p50_s"].index("2.200") + 5 \
        == header.index("sim | live service") + len("sim | live service")


def test_live_policy_set_follows_the_deployment(tmp_path):
    from deployments.config import load_config

    spec, gpus = live_policy_set(load_config(_config(tmp_path, replicas=3)))
    assert gpus == 3 and spec.autoscaling == "none" and spec.max_models_per_replica == 2
    assert spec.routing == "ray-multiplex" and spec.routing_args == {"max_ongoing": 100}
    assert not spec.host_cache  # Ray's multiplexer drops evicted models


def test_coordinator_deployment_is_simulated_as_the_coordinator_set_with_its_budgets(tmp_path):
    from deployments.config import load_config

    config = load_config(_config(tmp_path, replicas=4, policies="coordinator"))
    spec, gpus = live_policy_set(config)
    assert gpus == 4 and spec.placement == "coordinator" and spec.eviction == "cost-aware"
    assert spec.max_models_per_replica is None and spec.host_cache
    # load ahead as the live replicas do it: these are CPU replicas, which read ahead from files
    # (the simulator's own coordinator sets are GPUs': no local file reads ahead)
    assert spec.load_ahead and spec.load_ahead_from == "any"
    assert POLICY_SETS["coordinator"].load_ahead_from == "auto"
    on_gpu = config.model_copy(update={"deployments": config.deployments.model_copy(update={
        "base_model": config.deployments.base_model.model_copy(update={"num_gpus": 1.0})})})
    assert live_policy_set(on_gpu)[0].load_ahead_from == "host+remote"
    cfg = load_profile(_profile(tmp_path), gpus, 5.0, 0, config.control)
    assert cfg.cluster.gpu_model_gb == pytest.approx((8 << 20) / 1e9)
    assert cfg.cluster.host_gb == pytest.approx((16 << 20) / 1e9) and cfg.cluster.disk_gb == 0
    # a ray-default deployment keeps the profile's memory: its cache counts models, not bytes
    ray_cfg = load_profile(_profile(tmp_path), gpus, 5.0, 0, load_config(_config(tmp_path)).control)
    assert ray_cfg.cluster.gpu_model_gb != cfg.cluster.gpu_model_gb
    # compute slots per host go with the coordinator's control set; Ray's defaults ignore them
    assert cfg.cluster.compute_slots == 0
    slotted = config.control.model_copy(update={"compute_slots": 2})
    assert load_profile(_profile(tmp_path), gpus, 5.0, 0, slotted).cluster.compute_slots == 2
    ray_slotted = load_config(_config(tmp_path)).control.model_copy(update={"compute_slots": 2})
    assert load_profile(_profile(tmp_path), gpus, 5.0, 0, ray_slotted).cluster.compute_slots == 0


def test_bad_profile_names_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inference: {fixed_s: -1}\n")
    with pytest.raises(ValueError, match=r"(?s)bad.yaml: not a valid simulator profile.*fixed_s"):
        load_profile(bad, 1, 5.0, 0)
    bad.write_text("- just a list\n")
    with pytest.raises(ValueError, match="YAML mapping"):
        load_profile(bad, 1, 5.0, 0)


def test_compare_relative_error_and_zero_live():
    cmp = compare({"latency_p50_s": 2.0, "slo_violation_rate": 0.0},
                  {"latency_p50_s": 2.5, "slo_violation_rate": 0.1}, keys=("latency_p50_s", "slo_violation_rate"))
    assert cmp["relative_error"] == {"latency_p50_s": 0.25, "slo_violation_rate": None}
    assert cmp["difference"]["slo_violation_rate"] == pytest.approx(0.1)


def test_slice_stats_one_definition_and_the_warmup_left_out():
    import numpy as np

    from trace_replay.replay.report import slice_stats

    lat = np.array([9.0, 9.0, 1.0, 2.0, 3.0, np.nan])
    done = np.array([True, True, True, True, True, False])
    load = np.array([1.0, 1.0, 0.1, 0.0, 0.0, 0.0])
    s = slice_stats(lat, done, load, slo_s=2.5)
    assert s["requests"] == 6 and s["completed"] == 5 and s["latency_p50_s"] == 3.0
    assert s["slo_violation_rate"] == pytest.approx(4 / 6)  # three late, one never completed
    w = slice_stats(lat, done, load, slo_s=2.5, skip=2)
    assert w["requests"] == 4 and w["latency_mean_s"] == pytest.approx(2.0)
    assert w["slo_violation_rate"] == pytest.approx(2 / 4) and w["load_seconds"] == pytest.approx(0.1)


def _stretch(per_host: int, contention: float = 0.0, measured: list | None = None) -> list[float]:
    from trace_replay.simulator.config import ClusterSpec

    return ClusterSpec(replicas_per_host=per_host, host_contention=contention,
                       host_stretch=measured or []).stretch_by_busy()


def test_parallel_service_counts_what_shared_hosts_lose():
    from trace_replay.replay.parity import parallel_service

    assert parallel_service(4, 1, _stretch(1, 0.4)) == 4  # one replica per GPU: nothing shared
    assert parallel_service(4, 4, _stretch(4)) == 4
    assert parallel_service(4, 4, _stretch(4, 0.4)) == pytest.approx(4 / 2.2)  # each job 1 + 0.4 x 3 as long
    assert parallel_service(5, 4, _stretch(4, 0.5)) == pytest.approx(4 / 2.5 + 1)  # a full host and one alone
    # measured on a 2-core host: two busy barely slow each other, four take 2.6x as long
    assert parallel_service(4, 4, _stretch(4, 0.4, [1.15, 1.9, 2.6])) == pytest.approx(4 / 2.6)
    assert parallel_service(3, 4, _stretch(4, 0.4, [1.15, 1.9, 2.6])) == pytest.approx(3 / 1.9)
    with pytest.raises(ValueError, match="replicas >= 1"):
        parallel_service(0, 1, [1.0, 1.0])
    with pytest.raises(ValueError, match="every busy count up to 4"):
        parallel_service(4, 4, [1.0, 1.0, 1.2])


def test_utilisation_sets_the_rate_from_the_profiles_capacity(server, tmp_path, capsys):  # noqa: F811
    from tests.trace_fixtures import FIX

    server.mode = ("serial", S_PER_STEP)
    # one replica, 2 steps x 40 ms = 80 ms a request: capacity 12.5 req/s, so 0.8 of it is 10 req/s
    args = ["parity", "--trace", str(FIX / "katz_small.json"), "--format", "katz", "--url", server.url,
            "--config", _config(tmp_path), "--profile", _profile(tmp_path), "--arrival", "poisson",
            "--seed", "2", "--out", str(tmp_path / "p"), "--no-progress"]
    assert t2i(args + ["--utilisation", "0.8", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    sized = doc["rate_from_capacity"]
    assert sized["mean_compute_s"] == pytest.approx(2 * S_PER_STEP)
    assert sized["capacity_rps"] == pytest.approx(1 / (2 * S_PER_STEP))
    assert sized["rate"] == pytest.approx(10.0) == doc["live_summary"]["arrival"]["rate"]
    # the same requests and arrivals as asking for that rate outright
    assert t2i(args + ["--rate", "10", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["rate_from_capacity"] is None
    assert plain["sim"]["latency_mean_s"] == pytest.approx(doc["sim"]["latency_mean_s"])

    assert t2i(args + ["--utilisation", "0.8", "--rate", "3"]) == 2
    assert "--rate or --utilisation, not both" in capsys.readouterr().err
    bad = [a if a != "poisson" else "trace" for a in args]
    assert t2i(bad + ["--utilisation", "0.8"]) == 2
    assert "needs --arrival poisson or gamma" in capsys.readouterr().err
