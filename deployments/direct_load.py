"""Reading a diffusers pipeline folder onto the device at close to the storage's read rate.

diffusers' `from_pretrained` (even with `device_map`) read a warm SD 1.5 at 4.0 GB/s on an H200
where one thread reads the same page-cached files at 5.9 GB/s and `safetensors.load_file` onto the
GPU reaches 5.3 GB/s; this loader reached 5.6 GB/s (benchmarks/results/gpu_path_h200.json).
diffusers builds every module, then places each tensor one by one. Here each safetensors file is
read with several threads (`os.preadv` releases the GIL, so page-cache copies run in parallel)
into its tensors, each its own allocation (the allocator's alignment: views into one buffer at
the file's offsets computed a different image on an H100 once a host-tier round trip had
realigned the weights):
- on a GPU through a few reused pinned staging chunks, each thread copying its chunk on to the
  tensors it overlaps on its own stream before it reads the next (pinned memory is what makes the
  host-to-device copy fast, and allocating it per load would cost more than the load);
- on a CPU straight into each tensor.
The modules are built with empty (meta) parameters from their configs and take these tensors as
they are (`load_state_dict(assign=True)`, strict), so nothing is initialised or copied twice.

What it does not read (raises `Unsupported`, and the engine falls back to diffusers' loader): a
component without exactly one safetensors file or a shard index, keys that do not match the
module exactly (old checkpoints whose keys diffusers renames on load), non-torch formats.
Tokenizers and schedulers are read by their own `from_pretrained`.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

READ_THREADS = 8
CHUNK_BYTES = 32 << 20
_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
           "U8": torch.uint8, "BOOL": torch.bool}
_staging_lock = threading.Lock()  # held by the one read using the chunks
_staging: list[torch.Tensor] = []  # pinned chunks, one per reading thread, made once per process


class Unsupported(Exception):
    """The folder holds something this loader does not read; use diffusers' loader."""


def read_safetensors(path: str | Path, device: str) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, each in its own allocation on `device`."""
    path = Path(path)
    with open(path, "rb") as fh:
        header_len = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(header_len))
    header.pop("__metadata__", None)
    tensors, spans = {}, []
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise Unsupported(f"{path.name}: tensor {name!r} has dtype {info['dtype']}")
        tensor = torch.empty(info["shape"], dtype=_DTYPES[info["dtype"]], device=device)
        begin, end = info["data_offsets"]
        if end - begin != tensor.numel() * tensor.element_size():
            raise Unsupported(f"{path.name}: tensor {name!r} spans {end - begin} bytes for shape "
                              f"{info['shape']}")
        tensors[name] = tensor
        if end > begin:
            spans.append((begin, end, tensor.reshape(-1).view(torch.uint8)))
    spans.sort(key=lambda span: span[0])
    fd = os.open(path, os.O_RDONLY)
    try:
        if device.startswith("cuda"):
            with _staging_lock:  # one read at a time uses the staging chunks (loads can overlap)
                _read_via_staging(fd, 8 + header_len, spans)
        else:
            _read_direct(fd, 8 + header_len, spans)
    finally:
        os.close(fd)
    return tensors


def _read_direct(fd: int, offset: int, spans: list) -> None:
    """Host tensors: each one's bytes read straight into it, over threads."""
    def read(span) -> None:
        begin, _, target = span
        _pread_fully(fd, memoryview(target.numpy()), offset + begin)

    with ThreadPoolExecutor(READ_THREADS) as pool:
        list(pool.map(read, spans))


def _read_via_staging(fd: int, offset: int, spans: list) -> None:
    """Device tensors: the data region read in CHUNK_BYTES pieces into pinned staging chunks (one
    per thread), each piece copied on to the tensors it overlaps on the thread's own stream."""
    if not spans:
        return
    size = spans[-1][1]
    chunks = [(at, min(CHUNK_BYTES, size - at)) for at in range(0, size, CHUNK_BYTES)]
    threads = min(READ_THREADS, len(chunks))
    while len(_staging) < threads:
        _staging.append(torch.empty(CHUNK_BYTES, dtype=torch.uint8, pin_memory=True))
    starts = [span[0] for span in spans]
    device = spans[0][2].device

    def worker(k: int) -> None:
        stream = torch.cuda.Stream(device=device)
        slot = _staging[k]
        for at, n in chunks[k::threads]:
            stream.synchronize()  # the slot's previous copies are done before it is refilled
            _pread_fully(fd, memoryview(slot.numpy()[:n]), offset + at)
            with torch.cuda.stream(stream):
                for target, source in chunk_pieces(spans, starts, at, n):
                    target.copy_(slot[source], non_blocking=True)
        stream.synchronize()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))


def chunk_pieces(spans: list, starts: list[int], at: int, n: int):
    """(tensor byte slice, slice of the chunk) for every tensor overlapping file data bytes
    [at, at + n); `spans` sorted (begin, end, byte view), `starts` their begins."""
    for i in range(max(bisect.bisect_right(starts, at) - 1, 0), len(spans)):
        begin, end, target = spans[i]
        if begin >= at + n:
            break
        lo, hi = max(begin, at), min(end, at + n)
        if lo < hi:
            yield target[lo - begin:hi - begin], slice(lo - at, hi - at)


def _pread_fully(fd: int, target: memoryview, offset: int) -> None:
    done = 0
    while done < len(target):
        n = os.preadv(fd, [target[done:]], offset + done)
        if n <= 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        done += n


def component_state(folder: Path, device: str) -> dict[str, torch.Tensor]:
    """A component folder's weights: its one safetensors file, or the shards its index names."""
    indexes = list(folder.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        shards = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
        files = [folder / s for s in shards]
    else:
        files = list(folder.glob("*.safetensors"))
        if len(files) != 1 or indexes:
            raise Unsupported(f"{folder.name}: expected one safetensors file or a shard index, "
                              f"found {sorted(f.name for f in files)}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_safetensors(f, device))
    return state


def load_module(library: str, class_name: str, folder: Path, device: str, dtype: torch.dtype):
    """A diffusers or transformers model built with empty weights from its config, then given
    the folder's tensors (cast to `dtype` where floating) on `device`."""
    import importlib

    from accelerate import init_empty_weights

    cls = getattr(importlib.import_module(library), class_name)
    if library == "diffusers":
        config = cls.load_config(str(folder))
        with init_empty_weights():
            model = cls.from_config(config)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(folder))
        with init_empty_weights():
            model = cls(config)
    state = component_state(folder, device)
    state = {k: v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v for k, v in state.items()}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:  # an older key layout diffusers or transformers would map
        raise Unsupported(f"{folder.name}: keys differ from {class_name}'s: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # a shape that does not match the config
        raise Unsupported(f"{folder.name}: {' '.join(str(exc).split())[:300]}") from exc
    # buffers outside the state dict (non-persistent) were made on the host
    model.to(device=device)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise Unsupported(f"{folder.name}: tensors left without weights")
    return model.eval()


def load_pipeline(pipeline_cls, folder: str | Path, device: str, dtype: torch.dtype, **kwargs):
    """`pipeline_cls` from a diffusers pipeline folder, its models read by `load_module`;
    `kwargs` override model_index entries (safety_checker=None, ...)."""
    import importlib
    import inspect

    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    accepted = inspect.signature(pipeline_cls.__init__).parameters
    components = {k: v for k, v in kwargs.items() if k in accepted}  # as from_pretrained drops them
    for name, spec in index.items():
        if name.startswith("_") or name in components or name not in accepted:
            continue
        if not isinstance(spec, list) or len(spec) != 2:
            components[name] = spec  # a pipeline flag such as requires_safety_checker
            continue
        library, class_name = spec
        if library is None:
            components[name] = None
            continue
        cls = getattr(importlib.import_module(library), class_name)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            components[name] = load_module(library, class_name, folder / name, device, dtype)
        else:  # tokenizers, schedulers: small, read by their own loader
            components[name] = cls.from_pretrained(str(folder / name))
    return pipeline_cls(**components)
