"""Load ahead: may a request waiting for a busy replica start loading what it lacks, and which
models must that load leave alone.

A replica serves its requests one at a time, in order. A request behind others can load its
missing models while it waits, so the load overlaps the running request's compute instead of
adding to everyone's wait (Ray's ``serve.multiplexed`` loads before a replica's lock the same
way, without the two rules here). Two rules keep it from hurting the requests before it:

- ``may_load_ahead``: only when every request before it has its models on the device or loading.
  Otherwise it would take room an earlier request's load needs, and that load (at the replica,
  where it must make room) would evict what was loaded ahead before its request came.
- ``keep``: its room comes only from models that no other request in the replica needs. At the
  replica a request's own load evicts those last (``spare`` there), since the requests queued
  behind it would load them again.

- ``ahead_tiers``: which tiers a load ahead may read from. Measured on an NVIDIA H200 with
  real-size SD 1.5 (benchmarks/load_overlap.py, results/load_overlap_h200*.json): a read of
  page-cached files beside a running 25-step generation slowed that generation x1.36-1.59 (the
  replica's Python thread launching the generation's kernels competes for the GIL with the
  loader): the running request lost about what the queued one would gain (a 0.36-0.56 s load),
  and the pair's work took x0.95-x1.58 the serial time (the bounds that run's timing allows); a
  cold read, which waits on the disk, slowed the generation x1.15 and hid 20-65% of itself; a
  host-tier reload (pinned memory to the device) hid 66% and left the generation at x1.02. A
  replica cannot tell a page-cached local read from a cold one, so on a GPU the default
  (``auto``) loads ahead from the host tier and from remote storage, not from local files. The
  remote tier is not measured: it is allowed because a fetch over the network waits on I/O
  longer still than the cold read did. On a CPU (the demo) loading ahead from files measured a
  gain live (README), so there ``auto`` reads from any tier.

Keys are whatever the caller names models by (registry ids live, integer keys in the simulator).
The live replica (deployments/replica_control.py, base_model.py) and the simulator
(trace_replay/simulator/engine.py) both decide through these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Literal, get_args

from policies.snapshot import DISK, HOST, REMOTE

# the settings ahead_tiers understands (the live control.load_ahead_from and the simulator's
# PolicySetSpec.load_ahead_from are typed with it), and the tiers of each but auto
AheadFrom = Literal["auto", "host", "host+remote", "any"]
AHEAD_FROM = get_args(AheadFrom)
_TIERS = {"host": frozenset({HOST}), "host+remote": frozenset({HOST, REMOTE}),
          "any": frozenset({HOST, DISK, REMOTE})}


def may_load_ahead(earlier: Iterable[Iterable[Hashable]], ready: Callable[[Hashable], bool]) -> bool:
    """Whether a request may load ahead: ``earlier`` holds the models of each request before it
    in the replica (the running one included); ``ready(model)``: on the device or loading."""
    return all(ready(m) for models in earlier for m in models)


def keep(others: Iterable[Iterable[Hashable]]) -> frozenset:
    """The models a load ahead (or, as a last resort, a load at the replica) must not evict:
    those the replica's other requests (``others``: the models of each) need."""
    return frozenset(m for models in others for m in models)


def ahead_from(setting: str, on_gpu: bool) -> str:
    """``setting`` (one of AHEAD_FROM) resolved for a device; ``auto`` is ``host+remote`` on a
    GPU and ``any`` elsewhere (see the module docstring for the measurements)."""
    if setting not in AHEAD_FROM:
        raise ValueError(f"load ahead from {setting!r}: expected one of {', '.join(AHEAD_FROM)}")
    return ("host+remote" if on_gpu else "any") if setting == "auto" else setting


def ahead_tiers(setting: str, on_gpu: bool) -> frozenset[int]:
    """The tiers (policies.snapshot HOST, DISK, REMOTE) a load ahead may read from."""
    return _TIERS[ahead_from(setting, on_gpu)]
