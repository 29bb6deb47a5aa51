"""Request resolution: defaults, limits, and a 4xx-worthy error naming the field for each bad input."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.resolve import resolve_request
from app.schemas import ImageGenerationRequest
from deployments.errors import RequestError


def _resolve(config, **body):
    return resolve_request(config, ImageGenerationRequest(prompt="p", **body), seed=11)


def test_defaults_come_from_the_registry(demo_config):
    plan = _resolve(demo_config)
    (spec,) = plan.specs
    assert (spec.base_model, spec.width, spec.height, spec.steps, spec.seed, spec.n) == (
        "tiny-sd-light", 64, 64, 2, 11, 1)
    assert not plan.cascade


def test_model_field_and_base_model_field(demo_config):
    assert _resolve(demo_config, model="tiny-sd-heavy").specs[0].base_model == "tiny-sd-heavy"
    assert _resolve(demo_config, model="tiny-sd-heavy", base_model="tiny-sd-light").specs[0].base_model == "tiny-sd-light"


def test_cascade_plans_light_then_heavy_with_their_own_steps(demo_config):
    plan = _resolve(demo_config, cascade=True, seed=5, cascade_threshold=0.25)
    assert [s.base_model for s in plan.specs] == ["tiny-sd-light", "tiny-sd-heavy"]
    assert [s.steps for s in plan.specs] == [2, 4] and plan.threshold == 0.25
    assert all(s.seed == 5 for s in plan.specs)


@pytest.mark.parametrize("body, field", [
    ({"base_model": "nope"}, "base_model"),
    ({"model": "tiny-lora-ink"}, "model"),
    ({"size": "48x48"}, "size"),
    ({"n": 5}, "n"),
    ({"num_inference_steps": 51}, "num_inference_steps"),
    ({"guidance_scale": 31}, "guidance_scale"),
    ({"response_format": "url"}, "response_format"),
    ({"loras": [{"id": "tiny-lora-missing"}]}, "loras[0].id"),
    ({"loras": [{"id": "tiny-cn-canny"}]}, "loras[0].id"),
    ({"loras": [{"id": "tiny-lora-ink"}, {"id": "tiny-lora-ink"}]}, "loras"),
    ({"loras": [{"id": f"tiny-lora-{n}"} for n in ("ink", "neon", "film", "clay")]}, "loras"),
    ({"controlnets": [{"id": "tiny-cn-x", "image": "AA=="}]}, "controlnets[0].id"),
    ({"controlnets": [{"id": "tiny-cn-canny", "image": "AA==", "preprocessor": "magic"}]},
     "controlnets[0].preprocessor"),
    ({"controlnets": [{"id": "tiny-cn-canny", "image": "AA=="}] * 3}, "controlnets"),
    ({"cascade": True, "base_model": "tiny-sd-heavy"}, "base_model"),
    ({"cascade_threshold": 0.3}, "cascade_threshold"),
])
def test_bad_request_names_the_field(demo_config, body, field):
    with pytest.raises(RequestError) as info:
        _resolve(demo_config, **body)
    assert info.value.field == field


@pytest.mark.parametrize("body", [
    {"n": 0}, {"seed": -1}, {"loras": [{"id": "../../etc/passwd"}]}, {"base_model": "a/b"},
    {"loras": [{"id": "tiny-lora-ink", "scale": 9}]}, {"unknown_field": 1}, {"prompt": ""},
    {"cascade_threshold": 1.5},
])
def test_schema_rejects_malformed_values(body):
    with pytest.raises(ValidationError):
        ImageGenerationRequest(**{"prompt": "p", **body})


def test_cascade_needs_configuration(demo_config):
    unconfigured = demo_config.model_copy(update={"cascade": demo_config.cascade.model_copy(
        update={"heavy": None})})
    with pytest.raises(RequestError, match="no cascade is configured"):
        _resolve(unconfigured, cascade=True)


def test_guidance_defaults_per_model_and_request_overrides(demo_config):
    raw = demo_config.model_dump()
    raw["models"][1]["default_guidance_scale"] = 0.0  # the heavy model, SD-Turbo style
    config = demo_config.model_validate(raw)
    plan = _resolve(config, cascade=True)
    assert [s.guidance_scale for s in plan.specs] == [5.0, 0.0]
    assert {s.guidance_scale for s in _resolve(config, cascade=True, guidance_scale=2.5).specs} == {2.5}


def test_config_enabled_cascade_applies_unless_the_request_opts_out(demo_config):
    config = demo_config.model_copy(update={"cascade": demo_config.cascade.model_copy(
        update={"enabled": True, "threshold": 0.7})})
    plan = _resolve(config)
    assert plan.cascade and plan.threshold == 0.7 and len(plan.specs) == 2
    assert not _resolve(config, cascade=False).cascade
