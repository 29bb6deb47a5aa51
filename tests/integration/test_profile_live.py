"""`t2i profile` against the suite's live Serve instance: a valid simulator profile and a table."""

from __future__ import annotations

import json

import pytest
import yaml

from app.cli import main

pytestmark = pytest.mark.integration


def test_profile_writes_a_simulator_profile_and_prints_the_table(base_url, tmp_path, capsys):
    out = tmp_path / "profile.yaml"
    assert main(["profile", "--url", base_url, "--out", str(out), "--repeats", "1",
                 "--steps", "1,3", "--adapters", "1", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "s_per_step" in table and "tiny-sd-light" in table and "LoRA first use" in table
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["models"]["tiny-sd-light"]["s_per_step"] > 0
    assert raw["models"]["tiny-sd-heavy"]["s_per_step"] > 0
    assert "broken-sd" in raw["failed"]  # the suite's unloadable base is reported, not fatal
    assert raw["overhead"]["n"] == 8 and raw["loads"]["lora_first"]
    doc = yaml.safe_load(out.read_text())
    assert doc["inference"]["per_model"]["tiny-sd-light"]["s_per_step"] > 0
    from trace_replay.simulator.config import SimConfig

    config = SimConfig.model_validate(doc)
    assert config.inference.per_model["tiny-sd-light"].s_per_step > 0
    assert config.cluster.load_model == "bandwidth"
