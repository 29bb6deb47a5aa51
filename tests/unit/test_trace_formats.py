"""Loaders on small fixtures in the real schemas: values, errors naming file and line, --lenient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trace_replay.formats import diffserve, gentd26, load_trace
from trace_replay.formats.katz import _exact, load_katz
from trace_replay.table import CONTROLNET, LORA, TraceFormatError

from tests.trace_fixtures import FIX  # noqa: E402


def _adapters(t, row):
    a, b = t.adapter_offsets[row], t.adapter_offsets[row + 1]
    return [(int(k), t.adapter_names(int(k))[i]) for k, i in zip(t.adapter_kind[a:b], t.adapter_id[a:b])]


def test_katz_fixture_values():
    t = load_katz(FIX / "katz_small.json")
    assert len(t) == 6 and t.services == ["A", "B"]
    assert t.instances == ["A/10.0.0.1", "B/10.0.0.1", "B/10.0.0.2"]  # instance = (scene_id, ip)
    assert t.time[4] == 105.0
    assert t.base_models[t.base_model[0]] == "m1" and t.base_model[1] == -1
    # ControlNets first, then LoRAs, nulls dropped
    assert _adapters(t, 0) == [(CONTROLNET, "cn1"), (LORA, "l1")]
    assert _adapters(t, 2) == [(CONTROLNET, "cn2"), (CONTROLNET, "cn1")]
    assert _adapters(t, 4) == []
    assert _adapters(t, 5) == [(CONTROLNET, "cn1"), (LORA, "l3"), (LORA, "l1")]
    assert list(t.n_controlnets) == [1, 0, 2, 0, 0, 1] and list(t.n_loras) == [1, 1, 0, 1, 0, 2]


def _same(a, b) -> None:
    for f in ("time", "service", "instance", "base_model", "adapter_offsets", "adapter_kind", "adapter_id"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    for f in ("services", "instances", "base_models", "controlnet_ids", "lora_ids"):
        assert getattr(a, f) == getattr(b, f), f


def test_katz_fast_and_exact_paths_agree(tmp_path):
    text = (FIX / "katz_small.json").read_text()
    fast = load_katz(FIX / "katz_small.json")
    _same(fast, _exact(FIX / "katz_small.json", text, False))
    # other layouts: one line, and integer ids, must give the same table
    one_line = tmp_path / "one.json"
    one_line.write_text(json.dumps(json.loads(text)))
    _same(load_katz(one_line), fast)
    ints = [{"timestamp": 1.0, "ip": 7, "scene_id": "A", "base_model_id": 3, "controlnets": [1], "loras": None}]
    p = tmp_path / "ints.json"
    p.write_text(json.dumps(ints))
    t = load_katz(p)
    assert t.instances == ["A/7"] and t.base_models == ["3"] and t.controlnet_ids == ["1"]


def test_katz_malformed_row_names_file_and_line():
    with pytest.raises(TraceFormatError) as err:
        load_katz(FIX / "katz_bad.json")
    assert err.value.line == 3 and "katz_bad.json:3" in str(err.value) and "timestamp" in str(err.value)


def test_katz_lenient_counts_skips():
    t = load_katz(FIX / "katz_bad.json", lenient=True)
    assert len(t) == 2 and t.skipped.count == 2
    assert any(":4:" in e and "controlnets" in e for e in t.skipped.examples)


def test_katz_invalid_json_names_line(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('[\n{"timestamp": 1, "ip": "a", "scene_id": "A"},\n{"timestamp": 2, "ip": "a"\n]\n')
    with pytest.raises(TraceFormatError, match=r"broken.json:4"):
        load_katz(p, lenient=True)  # unparseable JSON cannot be skipped: the rest is unknowable


def test_gentd26_requests():
    t = load_trace(FIX / "lora_request_trace_small.csv", "gentd26-requests")
    assert len(t) == 4 and t.services == ["G0000", "G0001", "G0325"]
    assert t.time[0] == np.datetime64("2024-11-15T16:57:50", "s").astype(np.int64)
    assert list(t.n_loras) == [0, 2, 1, 0] and t.n_adapters == 0
    assert t.steps[3] == -1 and t.exec_s[3] == 0.0 and t.base_model[3] == -1
    assert t.tasks[t.task[2]] == "IMG_2_IMG" and t.statuses[t.status[2]] == "FAILED" and t.images[2] == 4


def test_gentd26_requests_errors_and_lenient():
    with pytest.raises(TraceFormatError, match=r"lora_request_trace_bad.csv:3: column 'exec_time_seconds'"):
        load_trace(FIX / "lora_request_trace_bad.csv", "gentd26-requests")
    t = load_trace(FIX / "lora_request_trace_bad.csv", "gentd26-requests", lenient=True)
    assert len(t) == 2 and t.skipped.count == 4  # bad number, month 13, 1.5 images, short row
    assert [e.split(":")[1] for e in t.skipped.examples] == ["3", "4", "5", "6"]


def test_gentd26_processed_lora_args_and_arrivals():
    t = load_trace(FIX / "data_trace_processed_small.csv", "gentd26-processed", seed=1)
    assert len(t) == 6 and t.base_model[3] == -1
    assert _adapters(t, 2) == [(LORA, "lora_y"), (LORA, "lora_x")]
    np.testing.assert_allclose(t.adapter_scale[t.adapter_offsets[2]:t.adapter_offsets[3]], [0.8, 0.0])
    assert t.adapter_scale[t.adapter_offsets[4]] == pytest.approx(0.1)
    assert np.all(np.diff(t.time) >= 0)  # row order is arrival order
    assert 1000.0 <= t.time.min() and t.time.max() <= 1400.0 + 300.0  # inside the qps.csv span
    again = load_trace(FIX / "data_trace_processed_small.csv", "gentd26-processed", seed=1)
    np.testing.assert_array_equal(t.time, again.time)  # seeded
    other = load_trace(FIX / "data_trace_processed_small.csv", "gentd26-processed", seed=2)
    assert not np.array_equal(t.time, other.time)
    pois = load_trace(FIX / "data_trace_processed_small.csv", "gentd26-processed", arrival="poisson", mean_qps=2.0)
    assert pois.time[0] > 0 and np.all(np.diff(pois.time) > 0)


def test_gentd26_processed_bad_lora_args():
    with pytest.raises(TraceFormatError, match=r"data_trace_processed_bad.csv:3: column 'lora_args'"):
        load_trace(FIX / "data_trace_processed_bad.csv", "gentd26-processed", arrival="poisson")
    t = load_trace(FIX / "data_trace_processed_bad.csv", "gentd26-processed", lenient=True, arrival="poisson")
    assert len(t) == 2 and t.skipped.count == 1


def test_qps_shape_sums_containers():
    shape = gentd26.qps_shape(FIX / "qps.csv", window_s=57.0)
    # first instant: 0.09 (API) + 0.18 summed across containers; a gap counts as zero load
    assert shape.rate[0] == pytest.approx(0.27)
    assert shape.rate.min() == 0.0 and shape.mean_rate() > 0


def test_component_latencies_in_seconds():
    d = gentd26.load_component_latencies(FIX)
    assert set(d) == {"lora", "controlnet"}  # column order differs between files: read by name
    np.testing.assert_allclose(d["lora"].values_s, [2.0, 4.018, 7.109])
    rng = np.random.default_rng(0)
    assert set(d["controlnet"].sample(rng, 20)) <= {4.775, 5.515}


def test_diffserve_files():
    t = load_trace(FIX / "diffserve_trace.txt", "diffserve")
    np.testing.assert_allclose(t.time, [0.004, 0.033, 0.066, 0.078])
    assert list(t.prompt) == [1001, 4046, 2814, 4737]
    with pytest.raises(TraceFormatError, match=r"diffserve_trace_bad.txt:2"):
        load_trace(FIX / "diffserve_trace_bad.txt", "diffserve")
    assert load_trace(FIX / "diffserve_trace_bad.txt", "diffserve", lenient=True).skipped.count == 1
    conf = diffserve.load_confidence(FIX / "confidence_scores.csv")  # BOM in the header
    assert list(conf.content_id) == [1, 2] and conf.scores["sdturbo"][1] == pytest.approx(0.988)
    t_, f_ = diffserve.load_f_t(FIX / "f_t_small.csv")
    assert list(t_) == [0.0, 0.05, 0.1] and list(f_) == [0.0, 0.36, 0.449]
    prof = diffserve.load_profiles(FIX / "runtimes_small.csv")
    assert prof[0].model == "sdturbo" and list(prof[0].batch) == [1, 2] and list(prof[0].p50_ms) == [100, 150]
    app = diffserve.load_app(FIX / "app_small.json")
    assert app.slo_s == 5.0 and app.chain == ["sdturbo", "sdv15"]


def test_table_take_keeps_adapters_aligned():
    t = load_katz(FIX / "katz_small.json")
    s = t.sorted_by_time()
    assert list(s.time) == sorted(t.time) and s.time[1] == 100.0
    assert _adapters(s, 0) == [(LORA, "l1")]  # the t=99 request moved first with its adapters
    # ties keep file order: the two t=101.5 rows stay B-then-A as in the file
    assert [s.services[x] for x in s.service[2:4]] == ["B", "A"]
    a = t.for_service("A")
    assert len(a) == 4 and sum(len(_adapters(a, i)) for i in range(4)) == 7
    with pytest.raises(ValueError, match="service 'C'"):
        t.for_service("C")


def test_katz_pretty_printed_with_bom(tmp_path):
    """Indented (multi-line objects) and BOM-prefixed files give the same table."""
    text = json.dumps(json.loads((FIX / "katz_small.json").read_text()), indent=2)
    p = tmp_path / "pretty.json"
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    _same(load_katz(p), load_katz(FIX / "katz_small.json"))
