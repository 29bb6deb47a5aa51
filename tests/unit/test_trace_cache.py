"""Cache simulation under the `t2i trace cache` rules: hand-checked counts, engines agree, MIN bounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trace_replay.cache_sim import access_stream, run_cache, sweep
from trace_replay.cli import main
from trace_replay.formats.katz import load_katz
from trace_replay.table import LORA, build_table

from tests.trace_fixtures import FIX  # noqa: E402


def lora_sequence(seq: list[int], instance: list[int] | None = None):
    """One LoRA per request, requests one second apart."""
    n = len(seq)
    inst = instance or [0] * n
    return build_table(n, time=np.arange(n, dtype=float), instance=inst, adapter_offsets=np.arange(n + 1),
                       adapter_kind=np.full(n, LORA), adapter_id=seq, lora_ids=[f"l{i}" for i in range(max(seq) + 1)],
                       instances=[f"i{i}" for i in range(max(inst) + 1)])


# a b c a d a b: worked by hand in the comments of each row
HAND = [0, 1, 2, 0, 3, 0, 1]


@pytest.mark.parametrize("policy,expected", [
    ("lru", {1: 7, 2: 6, 3: 5}),     # K=3: d evicts b (least recent), so the last b misses
    ("lfu", {1: 7, 2: 6, 3: 5}),     # K=2: c evicts a (1 use, older); d evicts c; b evicts d (a has 2 uses)
    ("belady", {1: 7, 2: 5, 3: 4}),  # K=2: c evicts b (next use farthest), d evicts c (never again)
])
def test_hand_checked_misses(policy, expected):
    res = run_cache(lora_sequence(HAND), policy, [1, 2, 3])
    assert {k: res.summary(k)["misses"] for k in (1, 2, 3)} == expected


def test_lfu_differs_from_lru_where_frequency_matters():
    # a a a b c a b c a, K=2. LRU: a, b, c (evicts a), a (evicts b), b, c, a all miss -> 7.
    # LFU keeps a (3+ uses): a, b, c (evicts b), b (evicts c), c (evicts b) miss, a hits -> 5.
    seq = [0, 0, 0, 1, 2, 0, 1, 2, 0]
    lru = run_cache(lora_sequence(seq), "lru", [2]).summary(2)["misses"]
    lfu = run_cache(lora_sequence(seq), "lfu", [2]).summary(2)["misses"]
    assert (lru, lfu) == (7, 5)


def random_table(rng: np.random.Generator, n_inst: int, n_req: int, n_keys: int):
    counts = rng.integers(0, 4, size=n_req)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    kinds = rng.integers(0, 2, size=offsets[-1])
    ids = (rng.zipf(1.4, size=offsets[-1]) - 1) % n_keys
    return build_table(n_req, time=np.round(rng.random(n_req) * 50, 1), instance=rng.integers(0, n_inst, n_req),
                       adapter_offsets=offsets, adapter_kind=kinds, adapter_id=ids,
                       instances=[f"i{i}" for i in range(n_inst)], controlnet_ids=[f"c{i}" for i in range(n_keys)],
                       lora_ids=[f"l{i}" for i in range(n_keys)])


@pytest.mark.parametrize("seed", range(6))
def test_engines_agree_and_belady_is_a_lower_bound(seed):
    rng = np.random.default_rng(seed)
    t = random_table(rng, n_inst=4, n_req=150, n_keys=15)
    caps = [1, 2, 3, 5, 8]
    totals = {}
    for p in ("lru", "lfu", "belady"):
        lock = run_cache(t, p, caps, engine="lockstep")
        seq = run_cache(t, p, caps, engine="sequential")
        np.testing.assert_array_equal(lock.misses, seq.misses, err_msg=p)
        if p != "lfu":  # LFU's counts reset on eviction, so it has no inclusion property
            stack = run_cache(t, p, caps, engine="stack")
            np.testing.assert_array_equal(stack.misses, seq.misses, err_msg=f"{p} stack")
        totals[p] = lock.misses.sum(axis=0)
        assert np.all(np.diff(totals[p]) <= 0) or p == "lfu"  # LRU and MIN are stack algorithms
    assert np.all(totals["belady"] <= totals["lru"]) and np.all(totals["belady"] <= totals["lfu"])
    assert np.all(totals["belady"][0] == totals["lru"][0])  # K=1: every change of adapter is a miss


def test_misses_bounded_by_distinct_and_accesses():
    t = random_table(np.random.default_rng(9), n_inst=3, n_req=200, n_keys=6)
    s = access_stream(t)
    distinct = len({(i, k) for i, k in zip(s.instance.tolist(), s.key.tolist())})
    big = run_cache(t, "lru", [12]).summary(12)  # 12 slots hold all 6+6 keys: only cold misses
    assert big["misses"] == distinct and big["accesses"] == s.n_accesses


def test_rules_on_katz_fixture():
    t = load_katz(FIX / "katz_small.json")
    s = access_stream(t)
    # instance A/10.0.0.1: t=100 [cn1, l1], t=101.5 [cn2, cn1], t=106 [cn1, l3, l1]; t=105 has only a null
    a = t.instances.index("A/10.0.0.1")
    names = [(t.controlnet_ids + t.lora_ids)[k] for k in s.key[s.instance == a]]
    assert names == ["cn1", "l1", "cn2", "cn1", "cn1", "l3", "l1"]
    res = run_cache(t, "lru", [1, 2])
    assert res.summary(1)["accesses"] == 9 and res.summary(1)["requests"] == 6
    # K=1 on A: cn1 l1 cn2 cn1 (cn1 hit) l3 l1 -> 6 misses; B instances: 1 each
    assert res.summary(1)["misses"] == 6 + 1 + 1


def test_parallel_sweep_matches_serial():
    t = random_table(np.random.default_rng(3), n_inst=5, n_req=300, n_keys=20)
    s = access_stream(t)
    serial = sweep(s, ["lru", "belady"], [1, 4, 9], workers=1)
    parallel = sweep(s, ["lru", "belady"], [1, 4, 9], workers=2)
    for p in serial:
        np.testing.assert_array_equal(serial[p], parallel[p])


def test_prefetch_loads_count_as_loads():
    # i0 uses l0 l1 l0 l1; then i1 asks for l2 and, after it, fill-popular loads l0 and l1 into
    # i1's two free slots, so i1's later l0 hits: 3 misses + 2 prefetch loads (4 misses without)
    t = lora_sequence([0, 1, 0, 1, 2, 0], instance=[0, 0, 0, 0, 1, 1])
    res = run_cache(t, "lru", [3], prefetch_name="fill-popular").summary(3)
    assert (res["misses"], res["prefetch_loads"], res["loads"]) == (3, 2, 5)
    plain = run_cache(t, "lru", [3]).summary(3)
    assert (plain["misses"], plain["loads"]) == (4, 4)


@pytest.mark.parametrize("policy", ["lru", "cost-aware"])
def test_prefetches_used_before_eviction_are_counted(policy):
    from policies.eviction import EVICTION
    from policies.prefetch import PREFETCH
    from trace_replay.cache_sim import simulate_sequential

    # as above: i1 gets l0 and l1 prefetched after l2; it then asks for l0 (used), never for l1
    t = lora_sequence([0, 1, 0, 1, 2, 0], instance=[0, 0, 0, 0, 1, 1])
    used = np.zeros(2, dtype=np.int64)
    misses, pre = simulate_sequential(access_stream(t), EVICTION.create(policy), 3, PREFETCH.create("fill-popular"),
                                      prefetch_used=used)
    assert pre.tolist() == [0, 2] and used.tolist() == [0, 1] and misses.sum() == 3
    # two slots: after l2, one is free and fill-popular takes l1 (as used as l0, but more recent);
    # i1 never asks for l1, so the prefetch is loaded and wasted
    used[:] = 0
    t2 = lora_sequence([0, 1, 0, 1, 2, 3, 4, 0], instance=[0, 0, 0, 0, 1, 1, 1, 1])
    misses, pre = simulate_sequential(access_stream(t2), EVICTION.create(policy), 2, PREFETCH.create("fill-popular"),
                                      prefetch_used=used)
    assert pre[1] >= 1 and used[1] == 0


def test_cli_cache_json(capsys):
    assert main(["--no-progress", "cache", "--trace", str(FIX / "katz_small.json"), "--format", "katz",
                 "--policy", "belady", "--capacity", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"requests", "accesses", "misses", "loads"} <= set(out)
    assert out["requests"] == 6 and out["accesses"] == 9 and out["loads"] == out["misses"]


def test_cli_cache_defaults_to_the_live_services_policies(capsys):
    from policies.defaults import DEFAULT_ADAPTER_PREFETCH, DEFAULT_EVICTION

    assert main(["--no-progress", "cache", "--trace", str(FIX / "katz_small.json"), "--format", "katz",
                 "--capacity", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["policy"], out["prefetch"]) == (DEFAULT_EVICTION, DEFAULT_ADAPTER_PREFETCH) == ("cost-aware", "none")
    for name in ("gdsf", "arc", "s3-fifo", "sieve"):  # the classic baselines by name, replayed sequentially
        assert main(["--no-progress", "cache", "--trace", str(FIX / "katz_small.json"), "--format", "katz",
                     "--policy", name, "--capacity", "2", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["policy"] == name and got["loads"] == got["misses"] >= 1


def test_cli_cache_policy_by_escape_hatch(capsys):
    assert main(["--no-progress", "cache", "--trace", str(FIX / "katz_small.json"), "--format", "katz",
                 "--policy", "policies.eviction:LRU", "--capacity", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["misses"] == 8


def test_cli_unknown_policy_is_a_clear_error(capsys):
    assert main(["--no-progress", "cache", "--trace", str(FIX / "katz_small.json"), "--format", "katz",
                 "--policy", "fifo", "--capacity", "1"]) == 2
    assert "unknown eviction policy 'fifo'" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(10))
def test_stack_pass_equals_per_capacity_simulation(seed):
    """Mattson's one-pass stack gives every capacity's misses exactly (LRU and MIN)."""
    rng = np.random.default_rng(100 + seed)
    t = random_table(rng, n_inst=3, n_req=400, n_keys=int(rng.integers(5, 40)))
    caps = list(range(1, 17))
    for p in ("lru", "belady"):
        stack = run_cache(t, p, caps, engine="stack").misses
        lock = run_cache(t, p, caps, engine="lockstep").misses
        np.testing.assert_array_equal(stack, lock, err_msg=p)


def test_stack_engine_refuses_lfu():
    from policies.eviction import EVICTION
    from trace_replay.stack_sim import simulate_stack

    t = random_table(np.random.default_rng(0), n_inst=2, n_req=20, n_keys=5)
    with pytest.raises(ValueError, match="not a stack algorithm"):
        simulate_stack(access_stream(t), EVICTION.create("lfu"), [1, 2])


def test_sequential_engine_counts_loads_by_kind_prefetches_included():
    from policies.eviction import EVICTION
    from policies.prefetch import PREFETCH
    from trace_replay.cache_sim import simulate_sequential
    from trace_replay.table import CONTROLNET

    t = random_table(np.random.default_rng(4), n_inst=3, n_req=200, n_keys=10)
    stream = access_stream(t)
    by_kind = np.zeros(8, dtype=np.int64)
    misses, pre = simulate_sequential(stream, EVICTION.create("cost-aware"), 3, PREFETCH.create("fill-popular"),
                                      loads_by_kind=by_kind)
    assert pre.sum() > 0 and by_kind.sum() == misses.sum() + pre.sum()
    # without prefetch, demand loads by kind = misses of each kind's accesses, counted directly
    by_kind[:] = 0
    misses, _ = simulate_sequential(stream, EVICTION.create("lru"), 1, loads_by_kind=by_kind)
    order = np.lexsort((stream.seq, stream.request))
    inst, key, kind = stream.instance[order], stream.key[order], stream.kind[order]
    held: dict[int, int] = {}
    want = np.zeros(8, dtype=np.int64)
    for i, k, kd in zip(inst.tolist(), key.tolist(), kind.tolist()):  # K=1: a miss whenever the key changes
        if held.get(i) != k:
            want[kd] += 1
            held[i] = k
    assert by_kind.tolist() == want.tolist() and want[CONTROLNET] > 0 and want[LORA] > 0
