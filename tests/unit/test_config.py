"""Config validation: every invalid config names the field at fault."""

from __future__ import annotations

import pytest
import yaml

from deployments.config import ConfigError, load_config, parse_config, parse_size
from tests.conftest import DEFAULT_CONFIG


def _raw() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_default_config_is_valid_and_complete():
    config = load_config(DEFAULT_CONFIG)
    assert config.ids("base") == ["tiny-sd-light", "tiny-sd-heavy"]
    assert len(config.ids("lora")) >= 8
    assert config.cascade_ready()
    assert config.model_root.startswith("/"), "model_root is made absolute at load"


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r["models"].append(dict(r["models"][0])), "models[2].id"),
    (lambda r: r["cascade"].update(heavy="missing"), "cascade.heavy"),
    (lambda r: r["cascade"].update(discriminator="tiny-sd-light"), "cascade.discriminator"),
    (lambda r: r["models"][0].update(sizes=["100x100"]), "models.0.sizes"),
    (lambda r: r["models"][0].update(id="../../etc/passwd"), "models.0.id"),
    (lambda r: r["deployments"]["base_model"].update(num_gpus=-1), "deployments.base_model.num_gpus"),
    (lambda r: r["deployments"]["base_model"].update(
        autoscaling={"min_replicas": 4, "max_replicas": 2}), "deployments.base_model.autoscaling"),
    (lambda r: r["limits"].update(max_loras_per_request=9), "limits.max_loras_per_request"),
    (lambda r: r.update(port=70000), "port"),
    (lambda r: r.update(typo_field=1), "typo_field"),
    (lambda r: r["models"][4].update(base_models=["nope"]), "base_models"),
])
def test_invalid_config_names_the_field(mutate, field):
    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="test.yaml")
    message = str(info.value)
    assert "test.yaml" in message
    assert field.split("[")[0].split(".")[0] in message
    assert field.replace("[2]", "") .split(".")[-1] in message


def test_duplicate_id_message_names_the_entry():
    raw = _raw()
    raw["models"].append(dict(raw["models"][0]))
    with pytest.raises(ConfigError, match=r"models\[13\]\.id: duplicate model id 'tiny-sd-light'"):
        parse_config(raw)


def test_load_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listy)


def test_parse_size():
    assert parse_size("64x32") == (64, 32)
    for bad in ("64", "63x64", "0x0", "64x64x3", "99999x8"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_resolve_source_relative_and_hub(demo_config):
    light = demo_config.entry("tiny-sd-light")
    assert demo_config.resolve_source(light).endswith("base/tiny-sd-light")
    hub = light.model_copy(update={"path": None, "hub_id": "org/model"})
    assert demo_config.resolve_source(hub) == "org/model"
