"""LoRAStore: the host-memory tier for LoRA adapters.

Reads adapter safetensors from the model store, keeps them under a byte budget, and hands them to
BaseModel replicas as Ray object references: an adapter is serialised into the object store once
when it is read, and every later hit is a reference, not a copy through this actor.
Which adapter leaves when the budget is exceeded is decided by an eviction policy from the
shared registry (`cache.lora_store_policy`), the same code the trace tools and the simulator run;
the store only keeps the statistics the policy reads and carries out its choice. A policy that
remembers (`is_stateful`) gets one memory over the byte budget, keyed by the adapters' integer
keys as the view holds them: a hit, or a miss then the evictions its room needs then its insert
(a prefetch: the evictions, then an insert flagged as one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployments.config import ServeConfig
from deployments.errors import ModelLoadError, RequestError
from deployments.lora_format import prepare_adapter
from policies.eviction import EVICTION, CacheView, is_stateful, propose_victims

LORA_KIND = 1  # component kinds as the policies number them: 0 ControlNet, 1 LoRA


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


@dataclass
class _Entry:
    ref: object
    size: int
    load_cost_s: float
    key: int
    loaded_seq: int
    last_seq: int
    last_time: float
    uses: int = 0


class LoRAStore:
    """The host tier. Reads run in a worker thread, so the actor's event loop keeps answering
    hits while an adapter is read and prepared (seconds for a large one); everything else (the
    cache, the policy's memory, the counters) changes only on the loop, where no two accesses
    interleave mid-update. `reader` is `read_lora_file`'s signature (tests pass a scripted one)."""

    def __init__(self, config: dict | ServeConfig, clock=time.monotonic,
                 reader: Callable[[str, str, int, str], dict] = read_lora_file):
        self.config = config if isinstance(config, ServeConfig) else ServeConfig.model_validate(config)
        self.budget = self.config.cache.lora_store_bytes
        self.policy = EVICTION.create(self.config.cache.lora_store_policy)
        self.memory = self.policy.new_memory(self.budget) if is_stateful(self.policy) else None
        self._clock = clock
        self._reader = reader
        self._cache: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Task] = {}  # single flight: one read per adapter at a time
        self._keys: dict[str, int] = {}  # stable integer ids, as the policies' views use
        self._seq = 0
        self.hits = self.misses = self.evictions = 0
        self.read_seconds = 0.0
        # The readers read_lora_file imports, at start-up: on a fresh service the first LoRA
        # request paid ~3 s for them (t2i profile, 'first adapter of a fresh service').
        from diffusers import StableDiffusionPipeline  # noqa: F401

    def _entry(self, adapter_id: str):
        try:
            entry = self.config.entry(adapter_id)
        except KeyError:
            raise RequestError("loras", f"unknown LoRA id {adapter_id!r}; "
                               f"{self.config.valid_ids_hint('lora')}") from None
        if entry.kind != "lora":
            raise RequestError("loras", f"{adapter_id!r} is a {entry.kind}, not a LoRA")
        return entry

    async def _load(self, adapter_id: str) -> _Entry:
        """Read and prepare the adapter in a worker thread (file I/O, safetensors parsing, the
        format conversion and the object-store put); the entry's bookkeeping on the loop."""
        entry = self._entry(adapter_id)
        source = self.config.resolve_source(entry)
        max_rank = self.config.cache.lora_max_rank

        def read() -> tuple[object, int, float]:
            import ray

            started = time.perf_counter()
            weights = self._reader(adapter_id, source, max_rank, entry.arch)
            ref = ray.put(weights) if ray.is_initialized() else weights
            return ref, weights_bytes(weights), time.perf_counter() - started

        ref, size, cost = await asyncio.to_thread(read)
        self.read_seconds += cost
        key = self._keys.setdefault(adapter_id, len(self._keys))
        # loaded at the access being served (a prefetch: at the latest one); a load is no access
        return _Entry(ref, size, cost, key, self._seq, self._seq, self._clock())

    def _read_once(self, adapter_id: str, seq: int, prefetch: bool) -> tuple[asyncio.Task, bool]:
        """The task reading `adapter_id`, started here unless one is running: (task, started).
        The task inserts the entry when the read lands; callers await it shielded, so a caller
        that gives up cancels neither the read nor the others waiting on it."""
        task = self._loading.get(adapter_id)
        if task is not None:
            return task, False

        async def load_and_insert() -> _Entry:
            try:
                item = await self._load(adapter_id)
            finally:
                del self._loading[adapter_id]
            item.loaded_seq = item.last_seq = seq
            if self.memory is not None and not prefetch:
                # after the read: a read that fails is no miss it remembers
                self.memory.on_miss(item.key, self._clock())
            self._insert(adapter_id, item, prefetch=prefetch)
            return item

        task = asyncio.ensure_future(load_and_insert())
        # retrieved here too: when every caller gave up, a failed read must not log
        # "exception was never retrieved"
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._loading[adapter_id] = task
        return task, True

    def _insert(self, adapter_id: str, item: _Entry, prefetch: bool = False) -> None:
        """Evict until `item` fits (never `item` itself: an adapter over the whole budget is kept
        alone), then insert it."""
        used = sum(e.size for e in self._cache.values())
        while used + item.size > self.budget and self._cache:
            ids = list(self._cache)
            (victim,) = propose_victims(self.policy, self._view(ids), n=1, memory=self.memory)
            used -= self._cache.pop(ids[victim]).size
            self.evictions += 1
            if self.memory is not None:
                self.memory.on_evict(self._keys[ids[victim]], self._clock())
        self._cache[adapter_id] = item
        if self.memory is not None:
            self.memory.on_insert(item.key, LORA_KIND, item.size, item.load_cost_s, self._clock(), prefetch=prefetch)

    def _view(self, ids: list[str]) -> CacheView:
        entries = [self._cache[a] for a in ids]

        def col(attr, dtype):
            return np.array([getattr(e, attr) for e in entries], dtype=dtype)

        return CacheView(
            key=col("key", np.int64), kind=np.full(len(ids), LORA_KIND, np.int8),
            uses=col("uses", np.int64), last_seq=col("last_seq", np.int64),
            loaded_seq=col("loaded_seq", np.int64), last_time=col("last_time", np.float64),
            seq=np.int64(self._seq), now=np.float64(self._clock()),
            size_bytes=col("size", np.int64), load_cost_s=col("load_cost_s", np.float64))

    def _touch(self, item: _Entry, seq: int) -> None:
        item.uses += 1
        item.last_seq = max(item.last_seq, seq)  # a joined read lands after later accesses
        item.last_time = self._clock()

    async def get(self, adapter_id: str) -> dict:
        """{'ref': object ref (or the tensors outside Ray), 'bytes': n, 'hit': bool}. A get
        while the same adapter is being read waits for that read (a hit, reported to the
        policy's memory when the read lands) instead of reading it again."""
        # The logical clock (CacheView.seq) ticks once per access, hit or miss, as in the
        # simulators: a policy that reads idle accesses (cost-aware) then decides the same here.
        self._seq += 1
        seq = self._seq
        item = self._cache.get(adapter_id)
        hit = item is not None
        if not hit:
            task, started = self._read_once(adapter_id, seq, prefetch=False)
            if started:
                self.misses += 1
                item = await asyncio.shield(task)
            else:
                hit = True
                item = await asyncio.shield(task)
                if self._cache.get(adapter_id) is not item:  # evicted before this caller resumed
                    return {"ref": item.ref, "bytes": item.size, "hit": True}
        if hit:
            self.hits += 1
            if self.memory is not None:
                self.memory.on_hit(item.key, self._clock())
        self._touch(item, seq)
        return {"ref": item.ref, "bytes": item.size, "hit": hit}

    async def prefetch(self, adapter_ids: list[str]) -> list[str]:
        """Read adapters into the host tier ahead of demand (unused until asked for: `uses` 0);
        returns the ids newly loaded (not those already cached or being read)."""
        loaded = []
        for adapter_id in adapter_ids:
            if adapter_id not in self._cache:
                task, started = self._read_once(adapter_id, self._seq, prefetch=True)
                await asyncio.shield(task)
                if started:
                    loaded.append(adapter_id)
        return loaded

    async def stats(self) -> dict:
        return {"adapters": list(self._cache), "bytes": sum(e.size for e in self._cache.values()),
                "budget_bytes": self.budget, "policy": self.config.cache.lora_store_policy,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "read_seconds": round(self.read_seconds, 4), "reading": list(self._loading)}
