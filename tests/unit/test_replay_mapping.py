"""Trace -> registry mapping of ``t2i replay``: popularity ranks kept, limits trimmed and counted."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from trace_replay.arrivals import gamma_renewal
from trace_replay.formats.katz import load_katz
from trace_replay.replay.mapping import Registry, map_requests, to_table
from trace_replay.table import CONTROLNET, LORA, build_table


def _registry(**kw) -> Registry:
    doc = {"data": [
        {"id": "b0", "kind": "base", "base_models": [], "default_steps": 2},
        {"id": "b1", "kind": "base", "base_models": [], "default_steps": 4},
        {"id": "l0", "kind": "lora", "base_models": []},
        {"id": "l1", "kind": "lora", "base_models": []},
        {"id": "l2", "kind": "lora", "base_models": ["b1"]},
        {"id": "c0", "kind": "controlnet", "base_models": ["b0"]},
        {"id": "d", "kind": "discriminator", "base_models": []},
    ], "t2i": {"default_base_model": "b1", "slo_s": 5.0,
               "limits": {"max_images_per_request": 2, "max_steps": 10, "max_loras_per_request": 2,
                          "max_controlnets_per_request": 1}}}
    doc["t2i"]["limits"].update(kw)
    return Registry.from_models_response(doc)


def _table(bases: list[int], adapters: list[list[tuple[int, int]]], steps=None, images=None):
    """bases: trace base code per row (-1 none); adapters: [(kind, id)] per row."""
    offsets = np.cumsum([0] + [len(a) for a in adapters])
    flat = [x for row in adapters for x in row]
    return build_table(
        len(bases), time=np.arange(len(bases), dtype=float) * 2.0 + 100,
        base_model=np.array(bases), adapter_offsets=offsets,
        adapter_kind=np.array([k for k, _ in flat], np.int8), adapter_id=np.array([i for _, i in flat]),
        base_models=[f"m{i}" for i in range(5)], lora_ids=[f"L{i}" for i in range(6)],
        controlnet_ids=[f"C{i}" for i in range(3)],
        steps=steps, images=images)


def test_registry_parse_and_errors():
    reg = _registry()
    assert reg.bases == ["b0", "b1"] and reg.loras == ["l0", "l1", "l2"] and reg.default_base == "b1"
    assert reg.applicable("lora", "b0") == ["l0", "l1"]
    assert reg.applicable("controlnet", "b1") == []
    with pytest.raises(ValueError, match="no base model"):
        Registry.from_models_response({"data": [{"id": "x", "kind": "lora"}]})
    with pytest.raises(ValueError, match="model list"):
        Registry.from_models_response({"detail": "nope"})


def test_popularity_rank_is_kept_and_wraps():
    # m3 is requested 3x, m1 2x, m4 once: ranks 0, 1, 2 -> b0, b1, b0 (wrap)
    t = _table([1, 3, 3, 4, 1, 3], [[]] * 6)
    reqs, rep = map_requests(t, _registry())
    assert rep.base_map == {"m3": "b0", "m1": "b1", "m4": "b0"}
    assert [r.base_model for r in reqs] == ["b1", "b0", "b0", "b0", "b1", "b0"]
    assert [r.steps for r in reqs] == [4, 2, 2, 2, 4, 2]  # each base's default steps
    assert reqs[0].time_s == 0.0 and reqs[-1].time_s == 10.0


def test_ties_in_popularity_go_to_the_first_seen():
    t = _table([2, 0, 2, 0], [[]] * 4)
    _, rep = map_requests(t, _registry())
    assert rep.base_map == {"m2": "b0", "m0": "b1"}


def test_adapters_map_by_rank_among_applicable_and_limits_are_trimmed():
    L, C = LORA, CONTROLNET
    t = _table(
        [0, 0, 1, -1, 1],
        [[(L, 5), (L, 5), (L, 2)],          # L5 twice in one row: the copy is a duplicate
         [(L, 5), (L, 3), (L, 2), (C, 1)],  # on b0 L3 (rank 2) wraps onto l0, L5's: duplicate
         [(C, 1), (C, 2)],                   # m1 -> b1: no ControlNet applies to b1
         [(L, 3)],                           # no base: the default (b1)
         [(L, 5), (L, 2), (L, 3)]],          # b1 has 3 applicable LoRAs: the 3rd is over the limit
        steps=np.array([50, 3, -1, 8, 2]), images=np.array([4, 1, -1, 2, 1]))
    reqs, rep = map_requests(t, _registry(), steps="trace")
    # LoRA ranks: L5 (4 uses) 0, L2 (3) 1, L3 (3, first seen after L2) 2; the report's table
    # is the rank over the whole registry list
    assert rep.lora_map == {"L5": "l0", "L2": "l1", "L3": "l2"}
    assert reqs[0].loras == (("l0", 1.0), ("l1", 1.0))
    assert reqs[1].loras == (("l0", 1.0), ("l1", 1.0)) and reqs[1].controlnets == ("c0",)
    assert reqs[2].base_model == "b1" and reqs[2].controlnets == ()
    assert reqs[3].base_model == "b1" and reqs[3].loras == (("l2", 1.0),)
    assert reqs[4].loras == (("l0", 1.0), ("l1", 1.0))
    assert rep.default_base_requests == 1
    assert rep.trimmed == Counter({"lora_duplicate_after_mapping": 2, "lora_over_limit": 1,
                                   "controlnet_not_applicable": 2, "images_over_limit": 1,
                                   "steps_over_limit": 1})
    assert rep.requests_trimmed == 4
    assert reqs[0].steps == 10 and reqs[0].n == 2  # clamped to the limits
    assert reqs[1].steps == 3 and reqs[2].steps == 4  # trace steps, else the base's default
    for r in reqs:  # nothing the service would refuse is left
        assert len(r.loras) <= 2 and len(r.controlnets) <= 1 and r.n <= 2 and r.steps <= 10
        assert len({a for a, _ in r.loras}) == len(r.loras)


def test_mapping_is_deterministic_and_round_trips_to_a_table(tmp_path):
    from tests.trace_fixtures import FIX

    t = load_katz(FIX / "katz_small.json")
    reg = _registry(max_controlnets_per_request=2)
    a, _ = map_requests(t, reg, seed=3)
    b, _ = map_requests(t, reg, seed=3)
    assert a == b
    assert [r.seed for r in a] == [3 + i for i in range(len(a))]
    table = to_table(a, reg)
    assert len(table) == len(a)
    for i, r in enumerate(a):
        assert table.base_models[table.base_model[i]] == r.base_model
        lo, hi = table.adapter_offsets[i], table.adapter_offsets[i + 1]
        names = [(table.lora_ids if k == LORA else table.controlnet_ids)[x]
                 for k, x in zip(table.adapter_kind[lo:hi], table.adapter_id[lo:hi])]
        assert names == list(r.controlnets) + [x for x, _ in r.loras]
        assert table.steps[i] == r.steps


def test_body_names_every_field_the_api_takes():
    reqs, _ = map_requests(_table([0], [[(CONTROLNET, 0), (LORA, 1)]]), _registry())
    body = reqs[0].body("AAAA")
    assert body["base_model"] == "b0" and body["loras"] == [{"id": "l0", "scale": 1.0}]
    assert body["controlnets"] == [{"id": "c0", "image": "AAAA"}]
    with pytest.raises(ValueError, match="conditioning image"):
        reqs[0].body(None)


def test_gamma_arrivals_mean_rate_and_burstiness():
    rng = np.random.default_rng(0)
    poisson = np.diff(gamma_renewal(20000, 4.0, 1.0, rng))
    bursty = np.diff(gamma_renewal(20000, 4.0, 3.0, rng))
    assert abs(poisson.mean() - 0.25) < 0.01 and abs(bursty.mean() - 0.25) < 0.02
    assert abs(poisson.std() / poisson.mean() - 1.0) < 0.05
    assert abs(bursty.std() / bursty.mean() - 3.0) < 0.3
    with pytest.raises(ValueError):
        gamma_renewal(3, 0.0, 1.0, rng)


def test_exclude_leaves_ids_out_and_names_unknown_ones():
    reg = _registry().without({"b1", "l0"})
    assert reg.bases == ["b0"] and reg.loras == ["l1", "l2"] and reg.default_base == "b0"
    reqs, _ = map_requests(_table([1, 2, -1], [[(LORA, 0)]] * 3), reg)
    assert {r.base_model for r in reqs} == {"b0"} and all(r.loras == (("l1", 1.0),) for r in reqs)
    with pytest.raises(ValueError, match="does not serve.*'nope'"):
        _registry().without({"nope"})
    with pytest.raises(ValueError, match="no base model"):
        _registry().without({"b0", "b1"})


@pytest.mark.parametrize("fmt,name", [("katz", "katz_small.json"),
                                      ("gentd26-requests", "lora_request_trace_small.csv"),
                                      ("gentd26-processed", "data_trace_processed_small.csv"),
                                      ("diffserve", "diffserve_trace.txt")])
def test_every_trace_format_maps_onto_the_registry(fmt, name):
    from tests.trace_fixtures import FIX
    from trace_replay.formats import load_trace

    opts = {"seed": 0} if fmt == "gentd26-processed" else {}
    table = load_trace(FIX / name, fmt, **opts)
    reqs, rep = map_requests(table, _registry(), steps="trace")
    assert len(reqs) == len(table) > 0
    assert [r.time_s for r in reqs] == sorted(r.time_s for r in reqs) and reqs[0].time_s == 0.0
    reg = _registry()
    for r in reqs:
        assert r.base_model in reg.bases and 1 <= r.n <= reg.max_images and 1 <= r.steps <= reg.max_steps
        assert all(a in reg.loras for a, _ in r.loras) and len(r.loras) <= reg.max_loras
    if fmt in ("katz", "gentd26-processed"):  # the formats that name adapters
        assert any(r.loras for r in reqs)
