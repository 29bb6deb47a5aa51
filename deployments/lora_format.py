"""LoRA adapters prepared once, in the host tier, for a fast hotswap on the replicas.

diffusers' `load_lora_weights(..., hotswap=True)` re-derives the adapter's peft config on every
swap (scanning the whole model state dict) before calling peft's hotswap; that bookkeeping is
most of a swap's cost (benchmarks/serving_overhead.py). Here it runs once per adapter when the
store reads it: keys in peft's UNet layout, and the LoraConfig that carries rank and alpha.
The replica then only calls peft's `hotswap_adapter_from_state_dict`, which copies tensors.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from deployments.errors import ModelLoadError


def prepare_adapter(adapter_id: str, state_dict: dict[str, torch.Tensor], network_alphas=None,
                    metadata=None) -> dict:
    """diffusers-format UNet LoRA ("unet."-prefixed keys, as diffusers' `lora_state_dict`
    returns it) -> {"state_dict": peft keys, "config": LoraConfig, "rank": max rank}."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    # diffusers' own config builder (private, pinned by the <0.43 range): the same rank/alpha
    # rules diffusers applies when it loads a LoRA, so a swapped adapter scales identically.
    from diffusers.utils.peft_utils import _create_lora_config

    foreign = [k for k in state_dict if not k.startswith("unet.")]
    if foreign:
        raise ModelLoadError(adapter_id, "only UNet LoRAs can go into hotswap slots (text-encoder "
                             f"hotswap is unsupported by diffusers); found {foreign[0]!r}")
    unet_state = {k.removeprefix("unet."): v for k, v in state_dict.items()}
    if unet_state and "lora_A" not in next(iter(unet_state)):
        unet_state = convert_unet_state_dict_to_peft(unet_state)
    if not unet_state:
        raise ModelLoadError(adapter_id, "the adapter file holds no tensors")
    alphas = ({k.removeprefix("unet."): v for k, v in network_alphas.items() if k.startswith("unet.")}
              if network_alphas else None)
    meta = ({k.removeprefix("unet."): v for k, v in metadata.items() if k.startswith("unet.")}
            if metadata else None)
    ranks = {f"^{k}": v.shape[1] for k, v in unet_state.items() if "lora_B" in k and v.ndim > 1}
    try:
        config = _create_lora_config(unet_state, alphas, meta or None, ranks, is_unet=True)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelLoadError(adapter_id, f"cannot derive a LoRA config: {exc}") from exc
    if getattr(config, "use_dora", False):
        raise ModelLoadError(adapter_id, "DoRA adapters cannot be hotswapped")
    return {"state_dict": unet_state, "config": config, "rank": max(ranks.values(), default=0)}


def slot_keys(state_dict: dict[str, torch.Tensor], slot: str) -> dict[str, torch.Tensor]:
    """peft names a loaded adapter's tensors `<module>.lora_A.<adapter>.weight`."""
    out = {}
    for key, value in state_dict.items():
        for part in (".lora_A.weight", ".lora_B.weight"):
            if key.endswith(part):
                key = key[: -len(".weight")] + f".{slot}.weight"
        out[key] = value
    return out


def check_fits(adapter_id: str, state_dict: Mapping[str, torch.Tensor], covered: Collection[str],
               max_rank: int) -> None:
    """Raise ModelLoadError naming the adapter unless every tensor patches one of the `covered`
    projections at a rank of at most `max_rank`."""
    for key, tensor in state_dict.items():
        module = key.removeprefix("unet.").split(".lora_")[0]
        if module not in covered:
            raise ModelLoadError(adapter_id, f"cannot hotswap into a LoRA slot: it patches "
                                 f"{module!r}, outside the slots' attention projections")
        if ".lora_A." in key and tensor.ndim >= 2 and tensor.shape[0] > max_rank:
            raise ModelLoadError(adapter_id, f"rank {tensor.shape[0]} exceeds the slots' "
                                 f"maximum rank {max_rank}")


def pin_adapter(prepared: dict) -> dict:
    """The prepared adapter with its tensors in pinned host memory when CUDA is there (their
    copies to the device are then asynchronous and several times faster), else as it is."""
    if not torch.cuda.is_available():
        return prepared
    return {**prepared, "state_dict": {k: v if v.is_pinned() else v.pin_memory()
                                       for k, v in prepared["state_dict"].items()}}
