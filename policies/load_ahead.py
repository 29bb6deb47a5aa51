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

Keys are whatever the caller names models by (registry ids live, integer keys in the simulator).
The live replica (deployments/replica_control.py, base_model.py) and the simulator
(trace_replay/simulator/engine.py) both decide through these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable


def may_load_ahead(earlier: Iterable[Iterable[Hashable]], ready: Callable[[Hashable], bool]) -> bool:
    """Whether a request may load ahead: ``earlier`` holds the models of each request before it
    in the replica (the running one included); ``ready(model)``: on the device or loading."""
    return all(ready(m) for models in earlier for m in models)


def keep(others: Iterable[Iterable[Hashable]]) -> frozenset:
    """The models a load ahead (or, as a last resort, a load at the replica) must not evict:
    those the replica's other requests (``others``: the models of each) need."""
    return frozenset(m for models in others for m in models)
