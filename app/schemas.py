"""Request and response bodies of the OpenAI-compatible Images API, with this service's extensions.

The OpenAI fields (`prompt`, `model`, `n`, `size`, `response_format`, `user`) keep their meaning;
the extensions (`base_model`, `loras`, `controlnets`, ...) arrive through the openai client's
`extra_body`. Unknown fields are rejected, so a misspelt extension fails loudly instead of being
ignored. Limits that depend on the deployed config are checked by the ingress.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.config import _MODEL_ID_RE, MODEL_ID_PATTERN


# C0 controls other than tab, newline and carriage return, DEL and C1 controls: never part of a
# prompt a person wrote, and they corrupt logs and terminals that print the request.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _check_text(value: str | None) -> str | None:
    if value is not None and (bad := _CONTROL_RE.search(value)):
        raise ValueError(f"contains the control character {bad.group()!r} at index {bad.start()}")
    return value


# Strict numbers: NaN and infinities (which Python's JSON parser accepts) are refused by field.
_REQUEST = ConfigDict(extra="forbid", allow_inf_nan=False)


def _check_id(value: str) -> str:
    if not _MODEL_ID_RE.match(value):
        raise ValueError(f"{value[:80]!r} is not a model id (must match {MODEL_ID_PATTERN})")
    return value


class LoraRef(BaseModel):
    model_config = _REQUEST
    id: str = Field(description="Registered LoRA id.")
    scale: float = Field(default=1.0, ge=-4.0, le=4.0, description="Adapter weight.")

    _id = field_validator("id")(_check_id)


class ControlNetRef(BaseModel):
    model_config = _REQUEST
    id: str = Field(description="Registered ControlNet id.")
    image: str = Field(description="Conditioning source image: base64 PNG or JPEG (a data URL "
                       "prefix is accepted).")
    conditioning_scale: float = Field(default=1.0, ge=0.0, le=4.0)
    preprocessor: str | None = Field(default=None, max_length=64, description="'canny', 'sobel', "
                                     "'grayscale', 'none' or 'aux:<detector>'; default per model.")

    _id = field_validator("id")(_check_id)


class ImageGenerationRequest(BaseModel):
    model_config = _REQUEST
    prompt: str = Field(min_length=1)
    model: str | None = Field(default=None, description="OpenAI field: the base model id.")
    n: int = Field(default=1, ge=1, description="Images to generate.")
    size: str | None = Field(default=None, pattern=r"^[0-9]{1,4}x[0-9]{1,4}$",
                             description="'WIDTHxHEIGHT', one the base model serves (GET "
                             "/v1/models lists them); default per base model.")
    response_format: Literal["b64_json", "url"] | None = Field(default=None)
    user: str | None = Field(default=None, max_length=256)
    base_model: str | None = Field(default=None, description="Base model id (wins over `model`).")
    negative_prompt: str | None = Field(default=None)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    loras: list[LoraRef] = Field(default_factory=list)
    controlnets: list[ControlNetRef] = Field(default_factory=list)
    cascade: bool | None = Field(default=None, description="Light model + discriminator + heavy "
                                 "model for rejected images; default from the config.")
    cascade_threshold: float | None = Field(default=None, ge=0.0, le=1.0, description="Override "
                                            "the configured discriminator threshold for this "
                                            "request (threshold sweeps, A/B quality checks).")

    _ids = field_validator("model", "base_model")(
        lambda v: v if v is None else _check_id(v))
    _text = field_validator("prompt", "negative_prompt", "user")(_check_text)


class ImageDatum(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class Timings(BaseModel):
    queue_s: float = 0.0
    slot_s: float = Field(0.0, description="Part of queue_s: the wait for one of the machine's "
                          "compute slots (control.compute_slots); 0 without them.")
    load_s: float = 0.0
    preprocess_s: float = 0.0
    inference_s: float = 0.0
    discriminator_s: float = 0.0
    total_s: float = 0.0
    swap_s: float = Field(0.0, description="Part of load_s: copying the request's LoRAs to the "
                          "device (merge mode) or swapping them into the hotswap slots (slots "
                          "mode); 0 when they were there already.")
    unmerge_s: float = Field(0.0, description="Part of load_s: taking the previous request's "
                             "merged LoRAs out of the attention weights before this request's "
                             "merge (cache.lora_mode: merge); 0 when it used the same ones, which "
                             "stay merged.")
    merge_s: float = Field(0.0, description="Part of load_s: adding the request's LoRAs into the "
                           "attention weights (cache.lora_mode: merge); 0 when they were merged "
                           "already.")
    fetch_s: float = Field(0.0, description="Part of load_s: fetching the request's LoRAs from the "
                           "LoRA store (0 when the replica had them in its slots or its adapter "
                           "host tier).")


class ImageGenerationResponse(BaseModel):
    created: int
    data: list[ImageDatum]
    model: str
    timings: Timings
    t2i: dict = Field(default_factory=dict, description="What ran: seed, adapters, cascade.")


class CachePinRequest(BaseModel):
    """POST /v1/cache/pin and /v1/cache/unpin: an operator's pins over the coordinator's plan."""

    model_config = _REQUEST

    models: list[str] = Field(min_length=1, max_length=64, description="Base-model or ControlNet ids.")
    replicas: list[str] | None = Field(default=None, max_length=1024, description="Replica ids to pin "
                                       "on (pin only; default: the coordinator picks one replica).")

    @field_validator("models")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        return [_check_id(v) for v in value]


def error_body(message: str, param: str | None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}
