"""What a replica has learned about its models' sizes and load times (the model cache's bookkeeping).

Sizes: a model's measured device bytes once loaded here; before that the source's estimate (on-disk
size) scaled by how measured sizes compared with estimates for the models of its kind loaded so
far. Load seconds: running means per (model, source tier); where a model has not been loaded from
a tier, its size over the bandwidth measured from that tier on any model (a default before any).
"""

from __future__ import annotations

from policies.snapshot import DISK, HOST, REMOTE

# Bytes per second assumed per source tier until this replica has measured loads from it:
# a pinned host-to-device copy on PCIe 4 (pageable memory is about half), a local
# `from_pretrained` (read + construct), a hub download. Measured means replace them.
DEFAULT_BANDWIDTH = {HOST: 8e9, DISK: 1e9, REMOTE: 2e8}


class LoadCosts:
    def __init__(self, source) -> None:
        self.source = source  # a deployments.model_cache.ModelSource
        self.sizes: dict[str, int] = {}  # measured device bytes per model
        self._ratio: dict[int, list[int]] = {}  # kind -> [measured bytes, estimated bytes]
        self.means: dict[tuple[str, int], list[float]] = {}  # (model, tier) -> [count, mean s]
        self._bandwidth: dict[int, list[float]] = {}  # tier -> [bytes, seconds] of all loads

    def size(self, model_id: str) -> int:
        size = self.sizes.get(model_id)
        if size is not None:
            return size
        estimate = self.source.estimate_bytes(model_id)
        measured, estimated = self._ratio.get(self.source.kind(model_id), (0, 0))
        return int(estimate * measured / estimated) if estimated > 0 else int(estimate)

    def record(self, model_id: str, kind: int, tier: int, size: int, seconds: float) -> None:
        if model_id not in self.sizes:
            ratio = self._ratio.setdefault(kind, [0, 0])
            ratio[0] += size
            ratio[1] += self.source.estimate_bytes(model_id)
        self.sizes[model_id] = size
        count, mean = self.means.get((model_id, tier), (0, 0.0))
        self.means[(model_id, tier)] = [count + 1, mean + (seconds - mean) / (count + 1)]
        total = self._bandwidth.setdefault(tier, [0.0, 0.0])
        total[0] += size
        total[1] += seconds

    def seconds(self, model_id: str) -> list[float]:
        """Seconds to bring `model_id` onto the device from [gpu, host, disk, remote]. A model
        whose source is a local disk has its disk cost in the remote column too: disk is where
        it comes from."""
        size = self.size(model_id)
        out = [0.0, 0.0, 0.0, 0.0]
        for tier in (HOST, DISK, REMOTE):
            measured = self.means.get((model_id, tier))
            if measured is not None:
                out[tier] = measured[1]
            else:
                nbytes, seconds = self._bandwidth.get(tier, (0.0, 0.0))
                rate = nbytes / seconds if nbytes > 0 and seconds > 0 else DEFAULT_BANDWIDTH[tier]
                out[tier] = size / rate
        if self.source.source_tier(model_id) == DISK:
            out[REMOTE] = out[DISK]
        return out
