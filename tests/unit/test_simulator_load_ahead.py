"""Load ahead (policies.load_ahead) in the simulator: a request queued on a busy GPU loads what it
lacks while the running job computes, only when every request before it is ready, and never
into room another request there needs."""

from __future__ import annotations

import numpy as np
import pytest

from policies.load_ahead import ahead_from, ahead_tiers, keep, may_load_ahead
from policies.snapshot import DISK, HOST, REMOTE
from trace_replay.simulator import POLICY_SETS, SimConfig, simulate
from trace_replay.table import build_table


def test_the_rules_on_their_own():
    ready = {"a", "b"}.__contains__
    assert may_load_ahead([["a"], ["a", "b"]], ready)
    assert not may_load_ahead([["a"], ["c"]], ready)  # an earlier request still lacks "c"
    assert may_load_ahead([], ready)
    assert keep([["a"], ["b", "c"], []]) == {"a", "b", "c"}
    # on a GPU no load ahead reads local files unless told to; elsewhere any tier
    assert ahead_tiers("auto", on_gpu=True) == ahead_tiers("host+remote", on_gpu=False) == {HOST, REMOTE}
    assert ahead_tiers("auto", on_gpu=False) == ahead_tiers("any", on_gpu=True) == {HOST, DISK, REMOTE}
    assert ahead_tiers("host", on_gpu=False) == {HOST}
    assert ahead_from("auto", on_gpu=True) == "host+remote" and ahead_from("auto", on_gpu=False) == "any"
    with pytest.raises(ValueError, match="'disk'.*auto, host, host.remote, any"):
        ahead_tiers("disk", on_gpu=True)


def _cfg(gpu_gb: float, host_gb: float = 0.0, disk_gb: float = 0.0) -> SimConfig:
    # bandwidth loads (1 s + size / 2 GB/s), 0.1 s per step, no jitter, one GPU, no host or disk
    # tier unless given
    return SimConfig.model_validate({
        "cluster": {"gpus": 1, "gpu_model_gb": gpu_gb, "host_gb": host_gb, "disk_gb": disk_gb,
                    "load_model": "bandwidth", "remote_gbps": 2.0},
        "components": {"sizes_gb": {"sd15": 2.0, "m2": 4.0, "m3": 0.5},
                       "reload_overhead_s": {"base_model": 1.0}},
        "inference": {"jitter_cv": 0.0, "fixed_s": 0.0, "per_model": {
            m: {"s_per_step": 0.1, "fixed_s": 0.0, "ref_pixels": 262144} for m in ("sd15", "m2", "m3")}}})


def _run(times, bases, steps, gpu_gb, ahead, ahead_from="any", host_gb=0.0, disk_gb=0.0):
    table = build_table(len(times), time=np.array(times, float), base_model=np.array(bases, np.int32),
                        base_models=["sd15", "m2", "m3"], steps=np.array(steps, np.int32))
    spec = POLICY_SETS["lru"].model_copy(update={"name": "lru-ahead", "load_ahead": ahead,
                                                 "load_ahead_from": ahead_from})
    return simulate(table, spec, _cfg(gpu_gb, host_gb, disk_gb))


@pytest.mark.parametrize("ahead", [False, True])
def test_a_queued_request_pays_only_what_is_left_of_its_load(ahead):
    # sd15 loads 2 s and computes 2 s (0 -> 4); m2, queued at 0.1, loads 3 s: from 0.1 beside it
    # when loading ahead (done at 3.1, before its start at 4), else after 4
    res = _run([0.0, 0.1], [0, 1], [20, 10], gpu_gb=8.0, ahead=ahead)
    assert res.records.start.tolist() == pytest.approx([0.0, 4.0])
    assert res.records.load_s[1] == pytest.approx(0.0 if ahead else 3.0)
    assert res.records.finish[1] == pytest.approx(5.0 if ahead else 8.0)
    assert res.summary["ahead_loads"] == (1 if ahead else 0) and res.summary["ahead_wasted"] == 0
    assert res.records.misses.tolist() == [1, 1]  # still a miss, and its load-seconds counted
    assert res.summary["load_seconds"] == pytest.approx(2.0 + 3.0)


def test_no_load_ahead_behind_a_request_still_lacking_its_model():
    # 5 GB: sd15 (2) runs; m2 (4) queued cannot load beside it; m3 (0.5) would fit, but loading it
    # would take room m2 needs at its start (m2 then evicts it: a wasted load)
    res = _run([0.0, 0.1, 0.2], [0, 1, 2], [20, 10, 10], gpu_gb=5.0, ahead=True)
    assert res.summary["ahead_loads"] == 0 and res.summary["ahead_wasted"] == 0
    # without the request before it, m3 loads ahead
    res = _run([0.0, 0.2], [0, 2], [20, 10], gpu_gb=5.0, ahead=True)
    assert res.summary["ahead_loads"] == 1 and res.records.load_s[1] == pytest.approx(0.0)


def test_a_load_ahead_never_evicts_what_another_queued_request_needs():
    # 4.5 GB: sd15 (2) and m3 (0.5) resident after the first two; then sd15 runs, m3 queued (needs
    # m3, resident), and m2 (4) queued lacks room unless m3 or sd15 go: it must wait for its start
    res = _run([0.0, 5.0, 10.0, 10.1, 10.2], [0, 2, 0, 2, 1], [20, 10, 20, 10, 10], gpu_gb=4.5, ahead=True)
    assert res.summary["ahead_loads"] == 0
    assert res.records.load_s[4] > 0.0  # m2 paid its load at its start


@pytest.mark.parametrize("host_gb", [0.0, 16.0])
def test_a_host_tier_copy_loads_ahead_and_a_local_disk_read_only_when_any_tier_is_allowed(host_gb):
    # 5 GB: m2 (4) runs first; sd15 (2) then evicts it (to the host tier when there is one, else
    # to the local disk tier); m3 (0.5) runs from 10 while m2, queued at 10.1, needs room only
    # idle sd15 holds
    args = ([0.0, 5.0, 10.0, 10.1], [1, 0, 2, 1], [10, 20, 20, 10], 5.0, True)
    disk_gb = 0.0 if host_gb else 16.0
    only = _run(*args, ahead_from="host", host_gb=host_gb, disk_gb=disk_gb)
    assert only.summary["ahead_loads"] == (1 if host_gb else 0)  # from disk: it loads at its start
    assert (only.records.load_s[3] == 0.0) == bool(host_gb)
    # on a GPU (auto) a read from the local disk tier waits for its start; from remote it goes ahead
    assert _run(*args, ahead_from="auto", host_gb=host_gb, disk_gb=disk_gb).summary["ahead_loads"] == (
        1 if host_gb else 0)
    assert _run(*args, ahead_from="auto").summary["ahead_loads"] == 1  # no tiers: m2 from remote
    assert _run(*args, ahead_from="host").summary["ahead_loads"] == 0
    assert _run(*args, ahead_from="any", host_gb=host_gb, disk_gb=disk_gb).summary["ahead_loads"] == 1
