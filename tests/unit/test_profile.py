"""`t2i profile`'s pure half on synthetic samples: the fit, load figures, the SimConfig it writes."""

from __future__ import annotations

import pytest
import yaml

from trace_replay.profile import Sample, summarize
from trace_replay.profile_fit import build_sim_profile, fit_service, render_table, yaml_text


def _sample(kind, base="m", steps=2, size="64x64", load=0.001, inference=None, adapter=None,
            replica="r1", latency_extra=0.02, swap=None):
    pixels = eval(size.replace("x", "*"))
    inference = inference if inference is not None else 0.05 + 0.01 * steps * pixels / 4096
    total = inference + load + 0.004
    timings = {"inference_s": inference, "load_s": load, "queue_s": 0.0, "total_s": total}
    if swap is not None:  # part of load_s: the LoRA slot swap alone
        timings["swap_s"] = swap
    return Sample(kind, base, steps, size, adapter, total + latency_extra, timings, replica)


def _samples():
    out = [_sample("probe", load=0.8), _sample("probe", base="n", load=0.001)]
    for steps in (2, 6):
        for size in ("64x64", "32x32"):
            out += [_sample("service", steps=steps, size=size),
                    _sample("service", base="n", steps=steps, size=size)]
    out += [_sample("lora-first", load=0.061, adapter="l1", inference=0.07 * 1.1),
            _sample("lora-slot", load=0.001, adapter="l1", inference=0.07 * 1.1),
            _sample("lora-store", base="n", load=0.021, adapter="l1", swap=0.004),
            _sample("cn-first", load=0.301, adapter="c1", inference=0.07 * 1.5),
            _sample("cn-warm", load=0.011, adapter="c1", inference=0.07 * 1.5),
            _sample("cn-first", load=0.401, adapter="c2", inference=0.07 * 1.5),
            _sample("cn-warm", load=0.351, adapter="c2", replica="r2", inference=0.07 * 1.5)]
    return out


def test_fit_recovers_the_per_step_line():
    fit = fit_service([2, 6, 2, 6], [4096, 4096, 1024, 1024], [0.07, 0.11, 0.055, 0.065], 4096)
    assert fit["s_per_step"] == pytest.approx(0.01) and fit["fixed_s"] == pytest.approx(0.05)
    one_point = fit_service([2, 2], [4096, 4096], [0.1, 0.1], 4096)
    assert one_point["s_per_step"] == pytest.approx(0.05) and one_point["fixed_s"] == 0.0


def test_summary_loads_overheads_and_factors():
    summary = summarize(_samples(), {"broken": "HTTP 500"})
    assert summary["models"]["m"]["s_per_step"] == pytest.approx(0.01)
    loads = summary["loads"]
    assert loads["base_model"] == pytest.approx([0.799])  # n's probe was already loaded
    assert loads["lora_first"] == pytest.approx([0.06]) and loads["lora_store"] == pytest.approx([0.02])
    assert loads["lora_swap"] == pytest.approx([0.004])  # the swap itself, not over a baseline
    # c2's warm request landed on another replica: a first use there
    assert loads["controlnet_first"] == pytest.approx([0.3, 0.4, 0.35])
    assert loads["controlnet_warm"] == pytest.approx([0.01])
    assert summary["overhead"]["total_s"] == pytest.approx(0.024)
    assert summary["inference_factors"]["lora"] == pytest.approx(0.1)
    assert summary["inference_factors"]["controlnet"] == pytest.approx(0.5)


def test_the_profile_is_a_simulator_config_and_the_table_prints():
    from trace_replay.simulator.config import SimConfig

    summary = summarize(_samples(), {})
    summary.update(url="http://x", measured_at="now", client_host="h", repeats=1, seconds=1.0,
                   sizes_gb={"m": 0.005}, defaults={"default_pixels": 4096, "default_steps": 2})
    summary["sim_profile"] = build_sim_profile(summary)
    text = yaml_text(summary, "p.json")
    assert text.startswith("# Simulator profile") and "p.json" in text
    table = render_table(summary)
    assert "s_per_step" in table and "LoRA first use" in table
    config = SimConfig.model_validate(yaml.safe_load(text))
    assert config.inference.per_model["m"].s_per_step == pytest.approx(0.01)
    assert config.inference.per_model["m"].fixed_s == pytest.approx(0.05 + 0.024)
    assert config.components.reload_overhead_s.lora == pytest.approx(0.06)
    assert config.components.reload_overhead_s.lora_swap == pytest.approx(0.004)
    assert config.cluster.load_model == "bandwidth" and config.components.sizes_gb == {"m": 0.005}


def test_host_contention_from_requests_sent_together():
    alone = _samples()
    # rounds of two requests on two replicas at once: each inference 30% over its alone median
    together = [_sample("concurrent", base=b, replica=r, inference=0.07 * 1.3) for b, r in (("m", "r1"), ("n", "r2"))]
    for s, g in zip(together + [_sample("concurrent", base="m", replica="r1", inference=0.07 * 1.3)], (0, 0, 1)):
        s.group = g
    summary = summarize(alone + together, {})
    host = summary["host"]
    # round 1 had one request (no neighbour): only the two of round 0 count
    assert host["replicas"] == 2 and host["n"] == 2 and host["contention"] == pytest.approx(0.3)
    profile = build_sim_profile(summary | {"sizes_gb": {}, "defaults": {}})
    assert profile["cluster"]["replicas_per_host"] == 2
    assert profile["cluster"]["host_contention"] == pytest.approx(0.3)
    # no concurrent samples: nothing claimed
    assert summarize(alone, {})["host"]["contention"] is None
    assert "host_contention" not in build_sim_profile(summarize(alone, {}) | {"sizes_gb": {}, "defaults": {}})["cluster"]


def test_host_stretch_from_jobs_that_end_apart():
    """Two jobs start together, each x1.5 as long while both run: the 0.07 s one ends at 0.105 s,
    the 0.11 s one has done 0.07 s of its work by then and runs its last 0.04 s alone, ending at
    0.145 s (x1.32 overall). The fit recovers x1.5; a median of the two ratios would say x1.41."""
    alone = _samples()
    short = _sample("concurrent", base="n", steps=2, replica="r2", inference=0.105)
    long = _sample("concurrent", base="m", steps=6, replica="r1", inference=0.145)
    short.group = long.group = 0
    host = summarize(alone + [short, long], {})["host"]
    assert host["stretch"] == {2: pytest.approx(1.5)}


def test_host_stretch_per_busy_count():
    """Groups of two and of three replicas at once on a 3-replica host: two share well (x1.1),
    three take twice as long; the profile keeps both, not one straight line through them."""
    alone = _samples()
    groups = [(0, [("m", "r1"), ("n", "r2")], 1.1), (1, [("n", "r2"), ("m", "r3")], 1.1),
              (2, [("m", "r1"), ("n", "r2"), ("m", "r3")], 2.0)]
    together = []
    for g, members, stretch in groups:
        for base, replica in members:
            s = _sample("concurrent", base=base, replica=replica, inference=0.07 * stretch)
            s.group = g
            together.append(s)
    host = summarize(alone + together, {})["host"]
    assert host["replicas"] == 3 and host["stretch"] == {2: pytest.approx(1.1), 3: pytest.approx(2.0)}
    assert host["contention"] == pytest.approx(0.5) and host["n"] == 3  # (2.0 - 1) / 2, from the full rounds
    cluster = build_sim_profile(summarize(alone + together, {}) | {"sizes_gb": {}, "defaults": {}})["cluster"]
    assert cluster["host_stretch"] == [1.1, 2.0] and cluster["replicas_per_host"] == 3
    # three busy measured below two (noise): the profile keeps two's, never a faster job
    dip = [s for s in together if s.group != 2] + [
        _sample("concurrent", base=b, replica=r, inference=0.07 * 1.05) for b, r in (("m", "r1"), ("n", "r2"), ("m", "r3"))]
    for s in dip[-3:]:
        s.group = 2
    assert summarize(alone + dip, {})["host"]["stretch"][3] == pytest.approx(1.05)
    assert build_sim_profile(summarize(alone + dip, {}) | {"sizes_gb": {}, "defaults": {}})["cluster"]["host_stretch"] == [1.1, 1.1]
    # a busy count never measured: no host_stretch (the simulator falls back to the line)
    partial = [s for s in together if s.group != 0 and s.group != 1]
    assert "host_stretch" not in build_sim_profile(summarize(alone + partial, {})
                                                   | {"sizes_gb": {}, "defaults": {}})["cluster"]
