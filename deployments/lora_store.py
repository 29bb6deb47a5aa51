"""LoRAStore: the host-memory tier for LoRA adapters.

Reads adapter safetensors from the model store, keeps them under a byte budget, and hands them to
BaseModel replicas as Ray object references: an adapter is serialised into the object store once
when it is read, and every later hit is a reference, not a copy through this actor.
Eviction is least-recently-used for now; the policy library replaces it later.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

from app.config import ServeConfig
from deployments.errors import ModelLoadError, RequestError
from deployments.lora_format import prepare_adapter


def read_lora_file(adapter_id: str, source: str, max_rank: int, arch: str = "sd15") -> dict:
    """Read a LoRA in any layout diffusers reads (peft with header metadata, kohya/A1111, older
    diffusers) and prepare it once, here in the host tier, for the slot swap (lora_format.py).
    ModelLoadError names the adapter on failure.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise ModelLoadError(adapter_id, f"expected one .safetensors file in {source!r}, "
                                 f"found {len(files)}")
        path = files[0]
    loader = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    try:
        state, alphas, metadata = loader.lora_state_dict(
            str(path.parent), weight_name=path.name, return_lora_metadata=True)
    except Exception as exc:  # safetensors, OSError, format errors from the converters
        raise ModelLoadError(adapter_id, f"cannot read {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    prepared = prepare_adapter(adapter_id, state, alphas, metadata)
    if prepared["rank"] > max_rank:
        raise ModelLoadError(adapter_id, f"rank {prepared['rank']} exceeds cache.lora_max_rank={max_rank}")
    return prepared


def weights_bytes(weights: dict) -> int:
    return sum(t.numel() * t.element_size() for t in weights["state_dict"].values())


class LoRAStore:
    def __init__(self, config: dict | ServeConfig):
        self.config = config if isinstance(config, ServeConfig) else ServeConfig.model_validate(config)
        self.budget = self.config.cache.lora_store_bytes
        self._cache: OrderedDict[str, tuple[object, int]] = OrderedDict()
        self.hits = self.misses = self.evictions = 0
        self.read_seconds = 0.0

    def _entry(self, adapter_id: str):
        try:
            entry = self.config.entry(adapter_id)
        except KeyError:
            raise RequestError("loras", f"unknown LoRA id {adapter_id!r}") from None
        if entry.kind != "lora":
            raise RequestError("loras", f"{adapter_id!r} is a {entry.kind}, not a LoRA")
        return entry

    def _load(self, adapter_id: str) -> tuple[object, int]:
        import ray

        entry = self._entry(adapter_id)
        started = time.perf_counter()
        weights = read_lora_file(adapter_id, self.config.resolve_source(entry),
                                 self.config.cache.lora_max_rank, entry.arch)
        size = weights_bytes(weights)
        ref = ray.put(weights) if ray.is_initialized() else weights
        self.read_seconds += time.perf_counter() - started
        return ref, size

    def _insert(self, adapter_id: str, item: tuple[object, int]) -> None:
        self._cache[adapter_id] = item
        used = sum(size for _, size in self._cache.values())
        while used > self.budget and len(self._cache) > 1:
            _, (_, size) = self._cache.popitem(last=False)
            used -= size
            self.evictions += 1

    async def get(self, adapter_id: str) -> dict:
        """{'ref': object ref (or the tensors outside Ray), 'bytes': n, 'hit': bool}."""
        if adapter_id in self._cache:
            self.hits += 1
            self._cache.move_to_end(adapter_id)
            ref, size = self._cache[adapter_id]
            return {"ref": ref, "bytes": size, "hit": True}
        self.misses += 1
        item = self._load(adapter_id)
        self._insert(adapter_id, item)
        return {"ref": item[0], "bytes": item[1], "hit": False}

    async def prefetch(self, adapter_ids: list[str]) -> list[str]:
        """Read adapters into the host tier ahead of demand; returns the ids newly loaded."""
        loaded = []
        for adapter_id in adapter_ids:
            if adapter_id not in self._cache:
                self._insert(adapter_id, self._load(adapter_id))
                loaded.append(adapter_id)
        return loaded

    async def stats(self) -> dict:
        return {"adapters": list(self._cache), "bytes": sum(s for _, s in self._cache.values()),
                "budget_bytes": self.budget, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions, "read_seconds": round(self.read_seconds, 4)}
