"""The synthetic generator hits the skew it is asked for, and the Katz loader reads it back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trace_replay.formats.katz import load_katz
from trace_replay.popularity import gini, skewed_counts, top_share
from trace_replay.synth import SynthConfig, generate, write_katz_json

TOL = 0.01  # stated tolerance on Gini and top-5% share of the generated trace


@pytest.mark.parametrize("target_gini,target_top", [(0.876, 0.78), (0.7, 0.6), (0.93, 0.85)])
def test_synth_trace_has_requested_skew(tmp_path, target_gini, target_top):
    cfg = SynthConfig(requests=30_000, instances=16, seed=5, base_models=300, gini=target_gini,
                      top_share=target_top, null_base_frac=0.0)
    out = tmp_path / "t.json"
    write_katz_json(cfg, out)
    t = load_katz(out)
    counts = np.bincount(t.base_model[t.base_model >= 0])
    assert abs(gini(counts) - target_gini) <= TOL
    assert abs(top_share(counts, 0.05) - target_top) <= TOL


def test_synth_round_trip_and_mix(tmp_path):
    cfg = SynthConfig(requests=20_000, instances=10, seed=1, base_models=200, days=2.0)
    out = tmp_path / "t.json"
    write_katz_json(cfg, out)
    raw = json.loads(out.read_text())  # valid JSON in the Katz schema
    assert len(raw) == 20_000 and set(raw[0]) == {"timestamp", "ip", "scene_id", "base_model_id", "controlnets", "loras"}
    g = generate(cfg)
    t = load_katz(out)
    np.testing.assert_allclose(t.time, np.round(g["time"], 3), atol=1e-6)
    assert len(t.instances) == 10 and t.services == ["A", "B"]
    assert np.mean(t.n_controlnets > 0) == pytest.approx(cfg.controlnet_share, abs=0.02)
    assert np.mean(t.n_loras > 0) == pytest.approx(cfg.lora_share * (1 - cfg.null_lora_frac), abs=0.02)
    assert np.mean(t.service == 0) == pytest.approx(cfg.service_a_share, abs=0.02)
    # diurnal: the peak hour carries clearly more than the trough hour
    hours = ((t.time - cfg.start_epoch_s) // 3600 % 24).astype(int)
    per_hour = np.bincount(hours, minlength=24)
    assert per_hour[14] > 2 * per_hour[2]
    # every instance serves one service only
    pairs = {(i, s) for i, s in zip(t.instance.tolist(), t.service.tolist())}
    assert len(pairs) == len(t.instances)


def test_synth_is_seeded(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.json", "b.json", "c.json"))
    write_katz_json(SynthConfig(requests=2000, instances=4, seed=7, base_models=50), a)
    write_katz_json(SynthConfig(requests=2000, instances=4, seed=7, base_models=50), b)
    write_katz_json(SynthConfig(requests=2000, instances=4, seed=8, base_models=50), c)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_unreachable_skew_is_an_error():
    with pytest.raises(ValueError, match="gini"):
        skewed_counts(10_000, 100, 0.5, 0.78)  # a top-5% share of 78% forces Gini above ~0.73


def test_gini_and_top_share_by_hand():
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 10])) == pytest.approx(0.0)  # only items that occur count
    assert gini(np.array([1, 3])) == pytest.approx(0.25)  # (2*(1*1+2*3))/(2*4) - 3/2
    assert top_share(np.array([60, 20, 10, 10]), 0.25) == pytest.approx(0.6)
    assert top_share(np.array([60, 20, 10, 10]), 0.3) == pytest.approx(0.8)  # ceil(0.3*4) = 2 items
