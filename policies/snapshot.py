"""The frozen cluster snapshot that placement, routing, prefetch and autoscaling policies read.

Why arrays and not one object per replica: the simulator routes >= 50k requests/s on one core,
so building a snapshot must cost O(1) (wrap arrays the simulator already keeps) and a routing
decision O(replicas) numpy. The simulator (or the live coordinator) owns these arrays and may
update them in place *between* calls; a policy only reads them (tests freeze them with
``flags.writeable = False`` to prove it). Component ids are dense ints ``0..C-1`` and replica
indices dense ints ``0..R-1``; the caller keeps the name <-> id maps.

Tiers: a component on a replica sits in one tier, the fastest that holds it. ``load_cost_s[c, t]``
is the time to bring component ``c`` from tier ``t`` to the GPU, so ``load_cost_s[:, GPU] == 0``
and ``load_cost_s[:, REMOTE]`` is a cold load from the model store.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# component kinds; CONTROLNET and LORA match trace_replay.table and CacheView.kind
CONTROLNET, LORA, BASE = 0, 1, 2
KIND_NAMES = ("controlnet", "lora", "base")

# storage tiers, fastest first; a replica "lacks" a component when its tier is REMOTE
GPU, HOST, DISK, REMOTE = 0, 1, 2, 3
TIER_NAMES = ("gpu", "host", "disk", "remote")

# popularity bands (also the pool codes of replicas); SHARED marks a replica in no band pool
HOT, WARM, COLD = 0, 1, 2
SHARED = -1
BAND_NAMES = ("hot", "warm", "cold")


class PipelineKey(NamedTuple):
    """A pipeline: one base model plus ControlNets and LoRAs, the unit of popularity and placement.

    Adapters are kept sorted so the same combination always makes the same key (a NamedTuple so
    it hashes and compares fast: the simulator interns millions of them).
    """

    base: int
    controlnets: tuple[int, ...] = ()
    loras: tuple[int, ...] = ()

    @classmethod
    def of(cls, base: int, controlnets=(), loras=()) -> "PipelineKey":
        return cls(int(base), tuple(sorted(int(c) for c in controlnets)), tuple(sorted(int(x) for x in loras)))

    def components(self) -> np.ndarray:
        """Component ids of the pipeline, base first (int64)."""
        return np.array((self.base, *self.controlnets, *self.loras), dtype=np.int64)


class PipelineIndex:
    """Interns pipeline keys to dense ids (mechanism-side helper; kept here so both callers agree).

    Holds the components of every pipeline in CSR form so per-pipeline bytes and load costs are
    one vectorised gather, not a Python loop.
    """

    def __init__(self) -> None:
        self._ids: dict[PipelineKey, int] = {}
        self.keys: list[PipelineKey] = []
        self._comps: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.keys)

    def intern(self, key: PipelineKey) -> int:
        pid = self._ids.get(key)
        if pid is None:
            pid = self._ids[key] = len(self.keys)
            self.keys.append(key)
            self._comps.append(key.components())
        return pid

    def get(self, key: PipelineKey) -> int | None:
        return self._ids.get(key)

    def components(self, pid: int) -> np.ndarray:
        return self._comps[pid]

    __getitem__ = components  # a Sequence of component arrays by pipeline id, as placement reads

    def bytes(self, components: "ComponentTable") -> np.ndarray:
        """Total bytes per pipeline (float64, shape (P,))."""
        return np.array([components.size_bytes[c].sum() for c in self._comps], dtype=np.float64)


@dataclass(frozen=True)
class ComponentTable:
    """Static facts about every component, indexed by component id."""

    kind: np.ndarray  # int8 (C,): CONTROLNET, LORA or BASE
    size_bytes: np.ndarray  # int64 (C,)
    load_cost_s: np.ndarray  # float64 (C, 4): seconds to the GPU from GPU/HOST/DISK/REMOTE

    def __post_init__(self) -> None:
        c = self.kind.shape[0]
        if self.size_bytes.shape != (c,) or self.load_cost_s.shape != (c, 4):
            raise ValueError(f"ComponentTable: kind {self.kind.shape}, size_bytes {self.size_bytes.shape} and "
                             f"load_cost_s {self.load_cost_s.shape} must be (C,), (C,), (C, 4)")

    @property
    def n(self) -> int:
        return int(self.kind.shape[0])


@dataclass(frozen=True)
class ReplicaTable:
    """Per-replica state of one deployment, indexed by replica index 0..R-1."""

    tier: np.ndarray  # int8 (R, C): tier at which each replica holds each component (REMOTE = lacks)
    queue_len: np.ndarray  # int64 (R,): requests running or queued on the replica
    busy_until: np.ndarray  # float64 (R,): when the queued work is expected to drain (seconds)
    gpu_free_bytes: np.ndarray  # int64 (R,)
    host_free_bytes: np.ndarray  # int64 (R,)
    pool: np.ndarray  # int8 (R,): band pool (HOT/WARM/COLD) or SHARED
    n_models: np.ndarray  # int64 (R,): models loaded, as Ray's multiplexing counts them
    # int64 (R,): which machine each replica runs on (replicas on one machine share its processors
    # and slow each other down); None: every replica on a machine of its own
    host: np.ndarray | None = None

    def __post_init__(self) -> None:
        r = self.tier.shape[0]
        for f in ("queue_len", "busy_until", "gpu_free_bytes", "host_free_bytes", "pool", "n_models", "host"):
            if getattr(self, f) is not None and getattr(self, f).shape != (r,):
                raise ValueError(f"ReplicaTable.{f} has shape {getattr(self, f).shape}, expected ({r},) "
                                 f"to match tier {self.tier.shape}")

    @property
    def n(self) -> int:
        return int(self.tier.shape[0])


@dataclass(frozen=True)
class RouteRequest:
    """The request being routed: its pipeline, the pipeline's components and popularity band."""

    pipeline: int  # dense pipeline id (PipelineIndex)
    components: np.ndarray  # int64 (k,): component ids, base first
    band: int = COLD  # HOT/WARM/COLD from the popularity policy
    arrival_s: float = 0.0
    compute_s: float = 0.0  # its expected compute (profile mean), for hosts whose replicas contend


@dataclass(frozen=True)
class ClusterSnapshot:
    """What a policy may know at ``now``: the replicas, the components, nothing else."""

    now: float
    replicas: ReplicaTable
    components: ComponentTable

    def __post_init__(self) -> None:
        if self.replicas.tier.shape[1] != self.components.n:
            raise ValueError(f"ReplicaTable.tier has {self.replicas.tier.shape[1]} components, "
                             f"ComponentTable has {self.components.n}")

    def missing_load_s(self, components: np.ndarray) -> np.ndarray:
        """Seconds each replica needs to bring ``components`` to its GPU (float64 (R,)).

        Loads are summed (one loader per replica, as in the live store). O(R x k); a loop over
        the k (1-5) components with ``take`` is ~2x faster than one 2-D fancy gather here.
        """
        tier, cost = self.replicas.tier, self.components.load_cost_s
        cs = components.tolist()
        if not cs:
            return np.zeros(tier.shape[0])
        out = cost[cs[0]].take(tier[:, cs[0]])
        for c in cs[1:]:
            out += cost[c].take(tier[:, c])
        return out

    @functools.cached_property
    def _machine(self) -> np.ndarray | None:
        """Per replica, its machine's index 0..M-1 (None: no machines known); computed once per
        snapshot for busy_neighbours and slot_wait_s."""
        host = self.replicas.host
        return None if host is None else np.unique(host, return_inverse=True)[1]

    def busy_neighbours(self) -> np.ndarray:
        """Per replica, how many *other* replicas on its machine have work now (int64 (R,))."""
        busy = (self.replicas.busy_until > self.now).astype(np.int64)
        inverse = self._machine
        if inverse is None:
            return np.zeros(busy.size, np.int64)
        return np.bincount(inverse, weights=busy).astype(np.int64)[inverse] - busy

    def slot_wait_s(self, slots: int) -> np.ndarray:
        """Per replica, seconds until it could compute without time-sharing its machine's
        ``slots`` processors (cores, or 1 for replicas sharing a GPU): 0 for a busy replica (its
        queue wait counts that) or an idle one on a machine with fewer than ``slots`` busy
        replicas; else the soonest any busy replica there drains its queue, freeing a slot
        (float64 (R,))."""
        wait = self.queue_wait_s()
        out = np.zeros(wait.size)
        inverse = self._machine
        if inverse is None or slots <= 0:
            return out
        busy = wait > 0
        n_busy = np.bincount(inverse, weights=busy)
        soonest = np.full(n_busy.size, np.inf)
        np.minimum.at(soonest, inverse[busy], wait[busy])
        full = ~busy & (n_busy[inverse] >= slots)
        out[full] = soonest[inverse[full]]
        return out

    def queue_wait_s(self) -> np.ndarray:
        """Seconds until each replica's queued work drains (float64 (R,))."""
        # np.maximum, not ndarray.clip: the same values without clip's Python-level wrapper
        # (a tenth of a simulated request's routing)
        return np.maximum(self.replicas.busy_until, self.now) - self.now


def make_replicas(n_replicas: int, n_components: int, gpu_bytes: int, host_bytes: int = 0) -> ReplicaTable:
    """Empty replicas (nothing loaded, idle, shared pool): a starting point for simulators and tests."""
    return ReplicaTable(tier=np.full((n_replicas, n_components), REMOTE, dtype=np.int8),
                        queue_len=np.zeros(n_replicas, np.int64), busy_until=np.zeros(n_replicas),
                        gpu_free_bytes=np.full(n_replicas, gpu_bytes, np.int64),
                        host_free_bytes=np.full(n_replicas, host_bytes, np.int64),
                        pool=np.full(n_replicas, SHARED, np.int8), n_models=np.zeros(n_replicas, np.int64))


def freeze(obj):
    """Mark every numpy array in a (nested) snapshot read-only; returns ``obj`` (tests, debugging)."""
    if isinstance(obj, np.ndarray):
        obj.flags.writeable = False
    elif hasattr(obj, "__dataclass_fields__"):
        for f in obj.__dataclass_fields__:
            freeze(getattr(obj, f))
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            freeze(x)
    return obj
