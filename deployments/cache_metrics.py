"""Prometheus metrics of a replica's model cache, through `ray.util.metrics`.

Ray exports them with its own metrics on each node's metrics export port (`t2i serve` prints it,
`metrics_export_port` in the config sets it), prefixed `ray_`: e.g. `ray_t2i_cache_hits_total`.
The cache keeps plain monotonic counters (`ModelCache.counters()`); `CacheMetrics.update` turns
each report period's growth into Counter increments, so the metrics cost nothing per request.
A `ray-default` deployment has none of these: Ray's own `serve_multiplexed_*` metrics cover it.
"""

from __future__ import annotations


def _leaves(tree: dict, path: tuple = ()) -> dict[tuple, float]:
    """{('loads', 'base', 'disk'): 3, ...} from the nested counters dict."""
    out: dict[tuple, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, (*path, key)))
        else:
            out[(*path, key)] = float(value)
    return out


class CacheMetrics:
    """Counters and gauges of one replica's cache; tags: deployment, replica and the counter's
    own dimensions (tier, source, kind, outcome, destination, reason)."""

    # counter group -> (metric name, description, tag keys below the group)
    _COUNTERS = {
        "hits": ("t2i_cache_hits_total", "Requests whose model was resident, by the tier it was in", ("tier",)),
        "misses": ("t2i_cache_misses_total", "Requests that loaded their model, by source", ("source",)),
        "joined": ("t2i_cache_joined_loads_total", "Requests that waited on a load already in flight", ()),
        "loads": ("t2i_cache_loads_total", "Loads onto the device by model kind and source tier", ("kind", "source")),
        "load_seconds": ("t2i_cache_load_seconds_total", "Seconds spent loading, by kind and source tier",
                         ("kind", "source")),
        "prefetch": ("t2i_cache_prefetches_total", "Prefetches started, used while resident, or wasted",
                     ("outcome",)),
        "placed": ("t2i_cache_pin_placements_total", "Pinned models loaded into free memory while the replica "
                   "was idle, by outcome (started, used while resident, wasted)", ("outcome",)),
        "ahead": ("t2i_cache_loads_ahead_total", "Loads a queued request started while it waited, by outcome "
                  "(started; used by a request; wasted = evicted or failed before one came)", ("outcome",)),
        "evictions": ("t2i_cache_evictions_total", "Evictions from the device, by destination (host, remote = dropped)",
                      ("to",)),
        "failures": ("t2i_cache_failures_total", "Requests the cache could not serve, by reason", ("reason",)),
    }

    def __init__(self, deployment: str, replica: str) -> None:
        from ray.util import metrics

        self.tags = {"deployment": deployment, "replica": replica}
        base = ("deployment", "replica")
        self.counters = {group: metrics.Counter(name, description=desc, tag_keys=base + dims)
                         for group, (name, desc, dims) in self._COUNTERS.items()}
        self.queue = metrics.Gauge("t2i_replica_queue_length", description="Requests running or "
                                   "waiting on the replica", tag_keys=base)
        self.bytes = metrics.Gauge("t2i_cache_bytes", description="Bytes the cache holds, by tier",
                                   tag_keys=base + ("tier",))
        self._last: dict[tuple, float] = {}

    def update(self, counters: dict, queue_len: int, gpu_bytes: int, host_bytes: int) -> None:
        """Add each counter's growth since the previous call; set the gauges."""
        for path, value in _leaves(counters).items():
            group, dims = path[0], path[1:]
            if group not in self._COUNTERS:
                continue
            grown = value - self._last.get(path, 0.0)
            self._last[path] = value
            if grown > 0:
                names = self._COUNTERS[group][2]
                self.counters[group].inc(grown, tags={**self.tags, **dict(zip(names, dims))})
        self.queue.set(queue_len, tags=self.tags)
        self.bytes.set(gpu_bytes, tags={**self.tags, "tier": "gpu"})
        self.bytes.set(host_bytes, tags={**self.tags, "tier": "host"})
