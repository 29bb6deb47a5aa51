"""Request -> validated GenerationSpecs against the deployed config (registry, sizes, limits).

Pure checks, no Ray: every rejection is a RequestError naming the field, raised before any
deployment is called, so a bad request never occupies a replica.
"""

from __future__ import annotations

from dataclasses import dataclass

from deployments.config import ServeConfig, parse_size
from app.schemas import ImageGenerationRequest
from deployments import preprocessor_names
from deployments.errors import RequestError
from deployments.spec import GenerationSpec

@dataclass(frozen=True)
class Plan:
    specs: list[GenerationSpec]  # one spec, or [light, heavy] for the cascade
    cascade: bool
    threshold: float


def _known(config: ServeConfig, model_id: str, kind: str, field: str):
    try:
        entry = config.entry(model_id)
    except KeyError:
        raise RequestError(field, f"unknown {kind} id {model_id!r}; {config.valid_ids_hint(kind)}") from None
    if entry.kind != kind:
        raise RequestError(field, f"{model_id!r} is a {entry.kind} model, not a {kind}")
    return entry


def _compatible(entry, base_id: str, field: str) -> None:
    if entry.base_models and base_id not in entry.base_models:
        raise RequestError(field, f"{entry.id!r} does not apply to base model {base_id!r} "
                           f"(it applies to {entry.base_models})")


def resolve_request(config: ServeConfig, body: ImageGenerationRequest, seed: int) -> Plan:
    limits = config.limits
    if body.response_format == "url":
        raise RequestError("response_format", "only 'b64_json' is supported")
    if len(body.prompt) > limits.max_prompt_chars:
        raise RequestError("prompt", f"longer than limits.max_prompt_chars={limits.max_prompt_chars}")
    if body.negative_prompt is not None and len(body.negative_prompt) > limits.max_prompt_chars:
        raise RequestError("negative_prompt", f"longer than limits.max_prompt_chars={limits.max_prompt_chars}")
    if body.n > limits.max_images_per_request:
        raise RequestError("n", f"at most {limits.max_images_per_request} images per request")
    cascade = config.cascade.enabled if body.cascade is None else body.cascade
    field, requested = ("base_model", body.base_model) if body.base_model else ("model", body.model)
    if cascade:
        if not config.cascade_ready():
            raise RequestError("cascade", "no cascade is configured (cascade.light/heavy/discriminator)")
        if requested and requested != config.cascade.light:
            raise RequestError(field, f"the cascade starts with {config.cascade.light!r}; "
                               f"omit {field} or set cascade to false")
        bases = [config.cascade.light, config.cascade.heavy]
    else:
        bases = [requested or config.base_model_id()]
    entries = [_known(config, b, "base", field) for b in bases]

    if len(body.loras) > limits.max_loras_per_request:
        raise RequestError("loras", f"at most {limits.max_loras_per_request} LoRAs per request")
    if len(body.controlnets) > limits.max_controlnets_per_request:
        raise RequestError("controlnets", f"at most {limits.max_controlnets_per_request} "
                           "ControlNets per request")
    lora_ids = [ref.id for ref in body.loras]
    if len(set(lora_ids)) != len(lora_ids):
        raise RequestError("loras", "the same LoRA id is listed twice")
    for index, ref in enumerate(body.loras):
        lora = _known(config, ref.id, "lora", f"loras[{index}].id")
        for base in bases:
            _compatible(lora, base, f"loras[{index}].id")
    for index, ref in enumerate(body.controlnets):
        net = _known(config, ref.id, "controlnet", f"controlnets[{index}].id")
        for base in bases:
            _compatible(net, base, f"controlnets[{index}].id")
        name = ref.preprocessor or net.default_preprocessor
        if not preprocessor_names.known(name):
            raise RequestError(f"controlnets[{index}].preprocessor", f"unknown preprocessor {name!r}; "
                               f"choose one of {list(preprocessor_names.BUILTIN_NAMES)} or 'aux:<detector>'")

    if body.guidance_scale is not None and body.guidance_scale > limits.max_guidance_scale:
        raise RequestError("guidance_scale", f"must be at most {limits.max_guidance_scale}")
    specs = []
    for entry in entries:
        guidance = entry.default_guidance_scale if body.guidance_scale is None else body.guidance_scale
        size = body.size or entry.sizes[0]
        if size not in entry.sizes:
            raise RequestError("size", f"{size!r} is not served by {entry.id!r}; "
                               f"supported: {entry.sizes}")
        width, height = parse_size(size)
        steps = body.num_inference_steps or entry.default_steps
        if steps > limits.max_steps:
            raise RequestError("num_inference_steps", f"must be at most {limits.max_steps}")
        specs.append(GenerationSpec(
            prompt=body.prompt, base_model=entry.id, width=width, height=height, steps=steps,
            guidance_scale=guidance, seed=seed if body.seed is None else body.seed, n=body.n,
            negative_prompt=body.negative_prompt,
            loras=tuple((r.id, r.scale) for r in body.loras),
            controlnets=tuple((r.id, r.conditioning_scale) for r in body.controlnets)))
    threshold = config.cascade.threshold if body.cascade_threshold is None else body.cascade_threshold
    if body.cascade_threshold is not None and not cascade:
        raise RequestError("cascade_threshold", "only applies when the cascade runs")
    return Plan(specs=specs, cascade=cascade, threshold=threshold)
