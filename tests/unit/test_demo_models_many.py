"""`t2i demo-models --bases N --loras M`: many tiny models and the generated config serving them."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import ray

from app.cli import main
from deployments.config import load_config
from app.demo_models import base_specs, controlnet_specs, lora_specs


@pytest.fixture(scope="module")
def many_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("many-models")
    assert main(["demo-models", "--out", str(out), "--bases", "4", "--loras", "11",
                 "--controlnets", "3", "--replicas", "3", "--quiet"]) == 0
    return out


def test_spec_sets_extend_the_default_set_with_numbered_ids():
    assert [b.id for b in base_specs(2)] == ["tiny-sd-light", "tiny-sd-heavy"]
    assert [b.id for b in base_specs(4)][2:] == ["tiny-sd-b00", "tiny-sd-b01"]
    assert [s.id for s in lora_specs(10)][8:] == ["tiny-lora-000", "tiny-lora-001"]
    assert [c.id for c in controlnet_specs(3)][2] == "tiny-cn-00"
    assert len({s.id for s in lora_specs(200)}) == 200 and len(base_specs(1)) == 1


def test_generated_config_validates_and_lists_every_model(many_dir, capsys):
    config = load_config(many_dir / "config.yaml")
    assert len(config.ids("base")) == 4 and len(config.ids("lora")) == 11
    assert config.ids("controlnet") == ["tiny-cn-canny", "tiny-cn-edges", "tiny-cn-00"]
    assert config.model_root == str(many_dir.resolve())
    base = config.deployments.base_model
    assert base.num_replicas == 3 and base.num_replicas * base.num_cpus <= 1.0
    assert config.cache.base_models_per_replica < len(config.ids("base"))
    assert config.cascade.light == "tiny-sd-light" and not config.cascade.enabled
    assert main(["check-config", str(many_dir / "config.yaml")]) == 0
    assert "'lora': 11" in capsys.readouterr().out


def test_default_build_writes_a_config_like_default_yaml(demo_dir, demo_config):
    generated = load_config(demo_dir / "config.yaml")
    assert [m.id for m in generated.models] == [m.id for m in demo_config.models]
    assert generated.cache.lora_store_bytes == demo_config.cache.lora_store_bytes


def test_a_many_set_lora_loads_through_the_store_and_styles_an_extra_base(many_dir):
    from deployments.lora_store import LoRAStore
    from deployments.pipeline_engine import PipelineEngine
    from deployments.spec import GenerationSpec

    config = load_config(many_dir / "config.yaml")
    got = asyncio.run(LoRAStore(config).get("tiny-lora-002"))
    # an object ref when Ray is up in this process (the integration suite in the same run)
    weights = ray.get(got["ref"]) if isinstance(got["ref"], ray.ObjectRef) else got["ref"]
    assert got["bytes"] > 0 and not got["hit"] and weights["rank"] == 4
    engine = PipelineEngine(config, device="cpu")
    loaded = engine.load_pipeline("tiny-sd-b01")
    spec = GenerationSpec(prompt="a boat", base_model="tiny-sd-b01", width=32, height=32, steps=2,
                          guidance_scale=5.0, seed=3)
    plain = engine.generate(loaded, spec).images[0]
    styled = engine.generate(loaded, GenerationSpec(**{**spec.__dict__, "loras": (
        ("tiny-lora-002", 1.0),)}), {"tiny-lora-002": weights}).images[0]
    assert not np.array_equal(plain, styled)


def test_bad_counts_stop_with_exit_code_2(tmp_path, capsys):
    assert main(["demo-models", "--out", str(tmp_path / "x"), "--bases", "0", "--quiet"]) == 2
    assert "bases >= 1" in capsys.readouterr().err


def test_multi_replica_config_is_what_demo_models_writes(tmp_path):
    """app/configs/multi-replica.yaml is `t2i demo-models --out models/many --bases 8 --loras 64
    --replicas 4`'s config (model_root aside), so the committed demo never drifts from the models
    `make serve-multi` builds; and its replica cache holds fewer pipelines than there are bases."""
    from pathlib import Path

    import yaml

    out = tmp_path / "many"
    assert main(["demo-models", "--out", str(out), "--bases", "8", "--loras", "64",
                 "--replicas", "4", "--quiet"]) == 0
    built = yaml.safe_load((out / "config.yaml").read_text())
    committed = yaml.safe_load((Path(__file__).resolve().parents[2] / "app" / "configs" /
                                "multi-replica.yaml").read_text())
    assert committed.pop("model_root") == "models/many"
    built.pop("model_root")
    # host_slots is the building machine's core count (the committed file: this project's 2-core one)
    import os

    assert built["control"]["routing_args"]["host_slots"] == (os.cpu_count() or 1)
    assert committed["control"]["routing_args"].pop("host_slots") >= 1
    built["control"]["routing_args"].pop("host_slots")
    assert committed == built
    config = load_config(out / "config.yaml")
    assert config.deployments.base_model.num_replicas >= 4
    import json

    manifest = json.loads((out / "manifest.json").read_text())["models"]
    sizes = sorted(m["size_bytes"] for m in manifest if m["kind"] == "base")
    assert config.control.gpu_budget_bytes < sum(sizes[:3])  # three pipelines never fit one replica
