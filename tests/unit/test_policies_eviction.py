"""Eviction and prefetch policies: registry rules, a contract every policy passes, purity."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from policies.eviction import (EMPTY, EVICTION, NEVER, CacheView, EvictionPolicy, is_stateful, lex_argmin,
                               propose_victims)
from policies.prefetch import PREFETCH, PrefetchContext
from policies.registry import Registry, RegistryError
from policies.shadow import ShadowCache

POLICIES_DIR = Path(__file__).resolve().parents[2] / "policies"


def make_view(rng: np.random.Generator, caches: int = 3, slots: int = 6, empty: float = 0.2) -> CacheView:
    """A random but consistent snapshot: seq is after every last use, next uses lie ahead."""
    key = rng.permutation(100)[: caches * slots].reshape(caches, slots).astype(np.int64)
    key[rng.random((caches, slots)) < empty] = EMPTY
    last = rng.integers(0, 50, (caches, slots))
    loaded = last - rng.integers(0, 10, (caches, slots))
    nxt = np.where(rng.random((caches, slots)) < 0.3, NEVER, 60 + rng.permutation(caches * slots).reshape(caches, slots))
    return CacheView(key=key, kind=rng.integers(0, 2, (caches, slots)).astype(np.int8),
                     uses=rng.integers(1, 5, (caches, slots)), last_seq=last, loaded_seq=loaded,
                     last_time=last * 0.5, seq=np.full(caches, 55), now=np.full(caches, 27.5), next_seq=nxt)


def replay(policy, seed: int, capacity: int = 6, n: int = 300) -> ShadowCache:
    """A stateful policy's shadow cache after a random skewed sequence over keys 0..19 (one
    access in ten a prefetch), so its memory has history: hits, misses, evictions, ghosts."""
    rng = np.random.default_rng(seed)
    shadow = ShadowCache(policy, capacity)
    for key in (rng.zipf(1.4, n) % 20).tolist():
        (shadow.prefetch if rng.random() < 0.1 else shadow.access)(key)
    return shadow


def one_cache(view: CacheView) -> CacheView:
    """The first cache of ``view`` as a 1-D view."""
    fields = ("key", "kind", "uses", "last_seq", "loaded_seq", "last_time", "next_seq")
    return replace(view, **{f: getattr(view, f)[0] for f in fields}, seq=view.seq[0], now=view.now[0])


@pytest.mark.parametrize("name", EVICTION.names())
class TestEvictionContract:
    """Every registered eviction policy: shape, bounds, determinism, no mutation. A stateful
    policy is checked on its memory after a replayed access sequence (it ranks one cache at a
    time, from the memory, so the stateless checks on 2-D views do not apply to it)."""

    def test_keys_shape_and_victim_bounds(self, name):
        policy = EVICTION.create(name)
        assert isinstance(policy, EvictionPolicy)
        if is_stateful(policy):
            shadow = replay(policy, 0)
            resident = shadow.keys()
            assert len(resident) == 6
            for keys in (resident, resident[::2], resident[-1:], []):
                order = shadow.memory.victim_order(keys)
                assert sorted(order) == sorted(keys) and len(order) == len(keys)  # exactly those, once each
            with pytest.raises(ValueError):
                policy.priority(make_view(np.random.default_rng(0)), shadow.memory)  # one cache at a time
            with pytest.raises(ValueError, match="memory"):
                policy.priority(one_cache(make_view(np.random.default_rng(0), caches=1)))
            return
        view = make_view(np.random.default_rng(0))
        keys = policy.priority(view)
        assert isinstance(keys, tuple) and keys and all(np.shape(k) == view.key.shape for k in keys)
        allowed = view.key != EMPTY
        victims = lex_argmin(keys, allowed)
        assert victims.shape == (view.key.shape[0],)
        for row, v in enumerate(victims):
            if allowed[row].any():
                assert allowed[row, v], "victim must be an occupied slot"

    def test_deterministic_and_pure(self, name):
        policy = EVICTION.create(name)
        if is_stateful(policy):
            a, b = replay(policy, 1), replay(EVICTION.create(name), 1)
            keys = a.keys()
            first = a.memory.victim_order(keys)
            assert b.memory.victim_order(keys) == first  # two memories fed the same events agree
            assert a.memory.victim_order(keys[::-1]) == first  # the caller's order does not matter
            a.memory.victim_order(keys[1:])
            assert a.memory.victim_order(keys) == first  # asking did not change the answer...
            rng = np.random.default_rng(11)
            for key in (rng.zipf(1.4, 200) % 20).tolist():  # ...nor what the cache does next
                assert a.access(key) == b.access(key)
            assert sorted(a.keys()) == sorted(b.keys())
            assert a.memory.victim_order(a.keys()) == b.memory.victim_order(a.keys())
            return
        view = make_view(np.random.default_rng(1))
        before = {f: np.copy(getattr(view, f)) for f in ("key", "uses", "last_seq", "next_seq")}
        a = lex_argmin(policy.priority(view), view.key != EMPTY)
        b = lex_argmin(EVICTION.create(name).priority(view), view.key != EMPTY)
        np.testing.assert_array_equal(a, b)
        for f, v in before.items():
            np.testing.assert_array_equal(getattr(view, f), v, err_msg=f"{name} mutated {f}")

    def test_propose_victims_skips_empty_and_pinned(self, name):
        policy = EVICTION.create(name)
        if is_stateful(policy):
            shadow = replay(policy, 2)
            one = replace(one_cache(make_view(np.random.default_rng(2), caches=1, slots=6, empty=0.0)),
                          key=np.array(sorted(shadow.keys()), dtype=np.int64))
            one.key[1] = EMPTY
            pinned = np.zeros(6, bool)
            pinned[2] = True
            victims = propose_victims(policy, one, n=10, pinned=pinned, memory=shadow.memory)
            assert sorted(victims.tolist()) == [0, 3, 4, 5]
            assert one.key[victims].tolist() == shadow.memory.victim_order(one.key[[0, 3, 4, 5]].tolist())
            return
        v = make_view(np.random.default_rng(2), caches=1, slots=6, empty=0.0)
        one = replace(v, **{f: getattr(v, f)[0] for f in ("key", "kind", "uses", "last_seq", "loaded_seq",
                                                             "last_time", "next_seq")}, seq=v.seq[0], now=v.now[0])
        one.key[1] = EMPTY
        pinned = np.zeros(6, bool)
        pinned[2] = True
        victims = propose_victims(policy, one, n=10, pinned=pinned)
        assert sorted(victims.tolist()) == [0, 3, 4, 5]
        assert len(set(victims.tolist())) == victims.size


def test_policy_choices_by_hand():
    view = CacheView(key=np.array([[10, 11, 12]]), kind=np.zeros((1, 3), np.int8), uses=np.array([[5, 1, 1]]),
                     last_seq=np.array([[1, 3, 2]]), loaded_seq=np.zeros((1, 3), np.int64),
                     last_time=np.zeros((1, 3)), seq=np.array([4]), now=np.array([4.0]),
                     next_seq=np.array([[9, NEVER, 6]]))
    allowed = np.ones((1, 3), bool)
    pick = {n: int(lex_argmin(EVICTION.create(n).priority(view), allowed)[0]) for n in ("lru", "lfu", "belady")}
    assert pick == {"lru": 0, "lfu": 2, "belady": 1}  # oldest; fewest uses then oldest; never used again


def test_belady_needs_the_oracle():
    view = replace(make_view(np.random.default_rng(3)), next_seq=None)
    with pytest.raises(ValueError, match="oracle"):
        EVICTION.create("belady").priority(view)


def test_registry_rules():
    reg: Registry[object] = Registry("test")
    reg.register("alpha", lambda: "a")
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("Alpha", lambda: "b")
    with pytest.raises(RegistryError, match="unknown test policy 'beta'; registered: alpha"):
        reg.create("beta")
    assert reg.create("ALPHA") == "a"
    assert type(reg.create("policies.eviction:LRU")).__name__ == "LRU"  # escape hatch
    with pytest.raises(RegistryError, match="cannot be imported"):
        reg.create("policies.eviction:Nope")
    assert {"lru", "lfu", "belady"} <= set(EVICTION.names()) and "none" in PREFETCH.names()


def test_fill_popular_prefetch_fills_free_slots_only():
    key = np.array([3, EMPTY, EMPTY], dtype=np.int64)
    z = np.zeros(3, np.int64)
    view = CacheView(key=key, kind=z.astype(np.int8), uses=z, last_seq=z, loaded_seq=z, last_time=z * 1.0,
                     seq=np.int64(5), now=np.float64(5.0))
    uses = np.array([0, 4, 2, 9, 4])
    last = np.array([-np.inf, 1.0, 2.0, 3.0, 4.0])
    ctx = PrefetchContext(view, uses, last, 5, 5.0)
    got = PREFETCH.create("fill-popular").propose(ctx, np.random.default_rng(0))
    assert got.tolist() == [4, 1]  # 3 is cached; 1 and 4 tie on uses, 4 was used more recently
    full = replace(view, key=np.array([3, 1, 2]))
    assert PREFETCH.create("fill-popular").propose(replace(ctx, view=full), np.random.default_rng(0)).size == 0


ALLOWED_IMPORTS = {"numpy", "scipy", "__future__", "dataclasses", "typing", "collections", "importlib",
                   "math", "abc", "enum", "functools", "itertools", "heapq", "pkgutil", "policies"}


def test_policies_package_is_pure():
    """policies/ imports numpy/scipy and the standard library only: no ray, torch, fastapi."""
    for path in POLICIES_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in ALLOWED_IMPORTS, f"{path.name} imports {name}"


def test_registry_discovers_policies_in_other_modules(tmp_path, monkeypatch):
    """A policy registered in any module of the discovery package is found by name."""
    pkg = tmp_path / "extra_policies"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from policies.registry import Registry\nREG = Registry('demo', discover='extra_policies')\n")
    (pkg / "costly.py").write_text("from extra_policies import REG\nREG.register('costly', lambda: 'built')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import extra_policies

    assert extra_policies.REG.create("costly") == "built" and extra_policies.REG.names() == ["costly"]
