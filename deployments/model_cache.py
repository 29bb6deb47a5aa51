"""A replica's model cache: a device byte budget, a host-memory tier under it, single-flight loads.

Entries are whole loaded models (a base pipeline, a ControlNet module) keyed by registry id. An
entry sits in one tier: GPU (on the device, usable), HOST (weights moved to host RAM, so bringing
it back is a host-to-device copy, not a read from storage), or nowhere (REMOTE: the next use loads
it from its source). Each tier has a byte budget that is never exceeded: bytes are reserved before
a load starts (the known size, else `ModelSource.estimate_bytes`), corrected to the measured size
after it, and a load that cannot be given room fails with `CacheBudgetError` naming the budget.
(A first load whose estimate was low has its weights on the device before its size is known; if
the difference cannot be made room for, they are freed and the request fails.)

Which entry leaves is proposed by an eviction policy from the shared registry on a `CacheView`
carrying sizes and load costs (policies decide, this module evicts). Entries in use by a request
are never proposed; pinned entries only when nothing unpinned can make the room a request needs
(a pin is the coordinator's advice, never a reason to refuse a request; counted as
`pins_overridden`). An entry evicted from the device goes to the host tier when it fits there (the
host tier evicts by the same policy, to nowhere).

A policy that remembers (`policies.eviction.is_stateful`) gets one memory per tier (capacity that
tier's budget, keyed by model id, deployments/tier_memory.py), and its `victim_order` ranks. The
GPU tier's memory hears a hit for a request served from the device (or joining a load already
under way), a miss and the evictions that made its room when a load starts, the insert when the
load lands (measured bytes; prefetch flagged; a load that fails has none), and an eviction for
every entry leaving the device (demoted or dropped). Other requests' events may come between a
miss and its insert. The host tier's memory hears a demotion as an insert (flagged prefetch: no
request asked for it) after the drops that made its room, and a reload to the device as a hit
and an eviction.

Concurrency: every method runs on the replica's event loop (no locks on the bookkeeping); loads
and device/host moves run in worker threads. Requests for a model being loaded wait on that one
load (single flight). A request that needs room held by entries other requests are using waits
for a release, first giving back what it holds itself so two requests cannot deadlock; room that
only its own models hold fails it at once (no wait could free it).

Load ahead (`load_ahead`): a request waiting for its replica may start its loads early, into room
taken only from entries outside a `keep` set (what the replica's other requests need); its
`acquire` later takes the load over as its own miss. `acquire`'s `spare` set is evicted last.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from deployments.load_costs import LoadCosts
from deployments.tier_memory import TierMemory
from policies.eviction import CacheView, EvictionPolicy, is_stateful, propose_victims
from policies.snapshot import DISK, GPU, HOST, KIND_NAMES, REMOTE, TIER_NAMES

logger = logging.getLogger(__name__)

def room_wait_s(slo_latency_s: float) -> float:
    """How long a request waits for other requests to release device room before it fails: long
    enough that a busy replica serves it late rather than not at all (as a queue would), bounded
    so a stuck replica answers with an error naming the budget instead of hanging."""
    return max(60.0, 4.0 * slo_latency_s)


class CacheBudgetError(RuntimeError):
    """A model cannot be given room without exceeding a cache budget (the message names it)."""

    def __init__(self, model_id: str, reason: str):
        super().__init__(f"model {model_id!r} cannot be loaded: {reason}")
        self.model_id = model_id
        self.reason = reason

    def __reduce__(self):  # Ray pickles exceptions (see deployments.errors)
        return (type(self), (self.model_id, self.reason))


class ModelSource(Protocol):
    """What the cache needs to know about, and do with, the models it holds. Methods other than
    the first three block and run in a worker thread."""

    def kind(self, model_id: str) -> int: ...  # policies.snapshot kind code
    def source_tier(self, model_id: str) -> int: ...  # DISK (local files) or REMOTE (hub)
    def estimate_bytes(self, model_id: str) -> int: ...  # device bytes before the first load
    def load(self, model_id: str) -> object: ...  # from its source onto the device
    def size_of(self, obj: object) -> int: ...  # device bytes of a loaded model
    def to_host(self, obj: object) -> object: ...  # device -> host RAM (a CPU replica: itself)
    def to_device(self, obj: object) -> object: ...  # host RAM -> device
    def free(self, obj: object) -> None: ...  # drop it for good


class _NoRoom(Exception):
    def __init__(self, reason: str, transient: bool):
        super().__init__(reason)
        self.reason, self.transient = reason, transient


@dataclass(eq=False)
class _Entry:
    model_id: str
    key: int
    kind: int
    tier: int = REMOTE  # where it settled: GPU or HOST (REMOTE only while its first load runs)
    obj: object = None
    gpu_bytes: int = 0  # reserved on the device (while loading: the reservation)
    host_bytes: int = 0  # reserved in the host tier
    users: int = 0  # requests holding it
    waiters: int = 0  # requests waiting on its load; they become users when it lands
    loading: asyncio.Task | None = None  # a load or host-to-device copy in progress
    moving: asyncio.Future | None = None  # a device-to-host move in progress
    load_from: int = REMOTE
    load_started: float = 0.0
    uses: int = 0  # requests served since it last came onto the device
    prefetched: bool = False  # came onto the device by prefetch and no request used it yet
    placed: bool = False  # that prefetch placed a coordinator pin (not a bandit prefetch)
    ahead: bool = False  # loaded ahead for a queued request that has not taken it yet
    loaded_seq: int = 0
    last_seq: int = 0
    last_time: float = 0.0


@dataclass(frozen=True)
class Lease:
    """A model held for one request; `ModelCache.release` gives it back."""

    model_id: str
    obj: object
    entry: _Entry = field(repr=False)


class ModelCache:
    def __init__(self, source: ModelSource, gpu_budget_bytes: int, host_budget_bytes: int,
                 policy: EvictionPolicy, clock=time.time):
        self.source = source
        self.gpu_budget = int(gpu_budget_bytes)
        self.host_budget = int(host_budget_bytes)
        self.policy = policy
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._keys: dict[str, int] = {}  # stable integer ids, as the policies' views use
        self.costs = LoadCosts(source)  # measured sizes and load seconds
        self._seq = 0
        self._room = asyncio.Lock()  # one caller at a time chooses victims and reserves bytes
        self._released = asyncio.Event()  # set (and replaced) whenever bytes may have freed up
        self.pins: frozenset[str] = frozenset()
        self._counters = _zero_counters()
        # since the last drain_events(): what the coordinator report carries
        self._loads: list[dict] = []
        self._evicted: list[dict] = []
        self._prefetch_hits: list[str] = []
        # a stateful policy's memory per tier: none for a stateless policy, GPU always, HOST
        # when the host tier is on
        self.memories: dict[int, TierMemory] = {}
        if is_stateful(policy):
            self.memories[GPU] = TierMemory(policy.new_memory(self.gpu_budget))
            if self.host_budget > 0:
                self.memories[HOST] = TierMemory(policy.new_memory(self.host_budget))

    # -- requests ---------------------------------------------------------------------------
    async def acquire(self, model_ids: Sequence[str], wait_s: float = 0.0,
                      spare: frozenset = frozenset()) -> list[Lease]:
        """Hold every model in `model_ids` on the device, loading what is missing. When room is
        held by other requests' models, wait up to `wait_s` for them (holding nothing meanwhile);
        CacheBudgetError when that runs out or pinned entries block. Load errors propagate.
        `spare`: models other requests queued here need, evicted only after every other idle
        unpinned entry."""
        deadline = time.monotonic() + wait_s
        counted: set[str] = set()
        while True:
            held: list[Lease] = []
            try:
                for model_id in model_ids:
                    held.append(await self._acquire_one(model_id, model_id not in counted,
                                                        frozenset(lease.model_id for lease in held), spare))
                    counted.add(model_id)
                return held
            except _NoRoom as no_room:
                self.release(held)
                left = deadline - time.monotonic()
                if not no_room.transient or left <= 0:
                    self._counters["failures"]["budget"] += 1
                    raise CacheBudgetError(model_ids[len(held)], no_room.reason) from None
                released = self._released
                try:
                    await asyncio.wait_for(released.wait(), left)
                except asyncio.TimeoutError:
                    pass
            except BaseException:
                self.release(held)
                raise

    def release(self, leases: Sequence[Lease]) -> None:
        for lease in leases:
            lease.entry.users -= 1
        if leases:
            self._notify()

    @asynccontextmanager
    async def use(self, model_ids: Sequence[str], wait_s: float = 0.0):
        leases = await self.acquire(model_ids, wait_s)
        try:
            yield [lease.obj for lease in leases]
        finally:
            self.release(leases)

    async def _acquire_one(self, model_id: str, count: bool, holding: frozenset = frozenset(),
                           spare: frozenset = frozenset()) -> Lease:
        self._seq += 1
        missed = False  # this call started the load (a miss to the memory, not also a hit)
        while True:
            entry = self._entries.get(model_id)
            if entry is not None and entry.moving is not None:
                await asyncio.shield(entry.moving)
                continue
            if entry is not None and entry.ahead:  # its load was started for this request
                self._claim_ahead(entry, count)
                missed, count = True, False
            if entry is not None and entry.tier == GPU and entry.loading is None:
                if count:
                    self._counters["hits"]["gpu"] += 1
                entry.users += 1
                self._touch(entry, hit=not missed)
                return Lease(model_id, entry.obj, entry)
            if entry is not None and entry.loading is not None:
                if count:
                    self._count_join(entry)
                await self._join(entry)
                self._touch(entry, hit=not missed)
                return Lease(model_id, entry.obj, entry)
            entry, started = await self._start_load(model_id, prefetch=False, holding=holding, spare=spare)
            missed = missed or started
            if count and started:
                self._count_miss(entry)
                count = False

    def _count_miss(self, entry: _Entry) -> None:
        """A request's miss, by where its load comes from (a host copy counts as a host hit)."""
        tier = entry.load_from
        self._counters["hits" if tier == HOST else "misses"][TIER_NAMES[tier]] += 1

    def _claim_ahead(self, entry: _Entry, count: bool) -> None:
        """A request takes the load `load_ahead` started: counted as its miss (the memory heard
        the miss when the load started), not as a join or a hit."""
        entry.ahead = False
        if count:
            self._count_miss(entry)
        self._counters["ahead"]["used"] += 1

    def _count_join(self, entry: _Entry) -> None:
        if entry.prefetched:
            self._counters["hits"]["gpu"] += 1  # the prefetch was for this request: a hit
        else:
            self._counters["joined"] += 1

    async def _join(self, entry: _Entry) -> None:
        """Wait for `entry`'s load; on success this caller is one of its users."""
        task = entry.loading
        entry.waiters += 1
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and not task.cancelled() and task.exception() is None:
                entry.users -= 1  # the load landed and counted this caller in
                self._notify()
            else:
                entry.waiters -= 1
            raise

    def _touch(self, entry: _Entry, hit: bool = True) -> None:
        """A request uses `entry` (`hit`: it found it on the device or loading; False: its own load)."""
        if entry.prefetched and entry.uses == 0:
            self._counters["placed" if entry.placed else "prefetch"]["used"] += 1
            if not entry.placed:  # the coordinator credits its bandit's prefetches only
                self._prefetch_hits.append(entry.model_id)
        entry.prefetched = entry.placed = False
        entry.uses += 1
        entry.last_seq = self._seq
        entry.last_time = self._clock()
        if hit and (gpu := self.memories.get(GPU)) is not None:
            gpu.hit(entry.model_id, entry.last_time)

    # -- prefetch and pins ------------------------------------------------------------------
    async def prefetch(self, model_id: str, placement: bool = False) -> bool:
        """Load `model_id` into free device budget (no eviction); False when it is already
        there or does not fit. The caller decides when the replica is idle enough. `placement`:
        it places a coordinator pin rather than a bandit prefetch (counted as `placed`, and its
        load reported as a placement)."""
        entry = self._entries.get(model_id)
        if entry is not None and (entry.tier == GPU or entry.loading is not None or entry.moving):
            return False
        try:
            entry, started = await self._start_load(model_id, prefetch=True)
        except _NoRoom:
            return False
        if not started:
            return False
        entry.placed = placement  # before its load lands and is reported (no await between)
        self._counters["placed" if placement else "prefetch"]["started"] += 1
        try:
            await asyncio.shield(entry.loading)
        except Exception as exc:  # a prefetch failing is logged, never raised into a request
            logger.warning("prefetch of %r failed: %s", model_id, exc)
            return False
        return True

    async def load_ahead(self, model_ids: Sequence[str], keep: frozenset,
                         tiers: frozenset = frozenset({HOST, DISK, REMOTE})) -> list[str]:
        """Start loading the models of `model_ids` missing from the device while their request
        waits for the replica, so the load overlaps the running request's compute (as Ray's
        `serve.multiplexed` loads before a replica's lock). Only loads from `tiers`
        (policies.load_ahead.ahead_tiers). Room comes only from idle
        entries not in `keep` (the models the replica's other queued or running requests need)
        nor pinned; a model without such room is left to the request's `acquire`. The request's
        `acquire` takes the load over (its miss); loads are not awaited here. Returns the ids
        started."""
        started = []
        keep = keep | frozenset(model_ids) | self.pins
        for model_id in model_ids:
            entry = self._entries.get(model_id)
            if entry is not None and (entry.tier == GPU or entry.loading is not None or entry.moving is not None):
                continue
            if self._load_from(model_id, entry) not in tiers:
                continue
            try:
                entry, began = await self._start_load(model_id, prefetch=False, keep=keep)
            except _NoRoom:
                continue
            if began:
                entry.ahead = True
                entry.loading.add_done_callback(_retrieved)  # its request's acquire sees a failure
                self._counters["ahead"]["started"] += 1
                started.append(model_id)
        return started

    def set_pins(self, model_ids) -> None:
        """The full pinned set (replaces the previous one): pinned entries are evicted last, only
        when nothing unpinned can make the room a request needs."""
        self.pins = frozenset(model_ids)
        self._notify()  # unpinned entries may make room for a waiting request

    # -- loading ----------------------------------------------------------------------------
    async def _start_load(self, model_id: str, prefetch: bool, holding: frozenset = frozenset(),
                          keep: frozenset = frozenset(), spare: frozenset = frozenset()) -> tuple[_Entry, bool]:
        """Reserve device bytes for `model_id` and start its load as a task: (entry, True); or
        (entry, False) when another caller got there first. Raises _NoRoom. `keep`: entries not
        to evict; `spare`: entries to evict last (see `_make_room`)."""
        async with self._room:
            entry = self._entries.get(model_id)
            if entry is not None and (entry.tier == GPU or entry.loading or entry.moving):
                return entry, False
            need = self.size_estimate(model_id)
            gpu = self.memories.get(GPU)
            if gpu is not None:  # its evictions go to the memory after the miss
                gpu.defer()
            try:
                await self._make_room(need, model_id, evict=not prefetch, holding=holding, keep=keep, spare=spare)
            except BaseException:
                if gpu is not None:
                    gpu.flush(None, self._clock())  # no load starts: what it evicted was dropped
                raise
            entry = self._entries.get(model_id)
            if entry is None:
                key = self._keys.setdefault(model_id, len(self._keys))
                entry = self._entries[model_id] = _Entry(model_id, key, self.source.kind(model_id))
            entry.load_from = self._load_from(model_id, entry)
            entry.gpu_bytes = need
            entry.load_started = time.perf_counter()
            entry.prefetched = prefetch
            if self.memories:
                self._remember_load_start(entry, prefetch)
            entry.loading = asyncio.create_task(self._run_load(entry, prefetch))
            return entry, True

    def _load_from(self, model_id: str, entry: _Entry | None) -> int:
        """The tier a load of `model_id` reads from: its host copy, else its source."""
        return HOST if entry is not None and entry.tier == HOST else self.source.source_tier(model_id)

    def _remember_load_start(self, entry: _Entry, prefetch: bool) -> None:
        """A load starts: on the GPU its miss (not for a prefetch), then the evictions that made
        its room (its insert follows when it lands, with the measured size); a host copy brought
        back for a request is a hit on the host tier, and leaves it."""
        now = self._clock()
        model_id = entry.model_id
        if entry.load_from == HOST and (host := self.memories.get(HOST)) is not None:
            if not prefetch:  # a request found it there
                host.hit(model_id, now)
            host.evict(model_id, now)
        if (gpu := self.memories.get(GPU)) is not None:
            gpu.flush(None if prefetch else model_id, now)

    async def _run_load(self, entry: _Entry, prefetch: bool) -> None:
        # A task of its own: a request cancelled mid-load cannot leave the bookkeeping half done.
        tier = entry.load_from
        try:
            if tier == HOST:
                obj = await asyncio.to_thread(self.source.to_device, entry.obj)
            else:
                obj = await asyncio.to_thread(self.source.load, entry.model_id)
            size = self.source.size_of(obj)
            if size > entry.gpu_bytes:  # the estimate was low: more room, or give up
                async with self._room:
                    try:
                        await self._make_room(size - entry.gpu_bytes, entry.model_id, evict=True)
                    except _NoRoom as no_room:
                        await asyncio.to_thread(self.source.free, obj)
                        raise CacheBudgetError(entry.model_id, f"measured {size} bytes after "
                                               f"loading; {no_room.reason}") from None
        except BaseException as exc:
            self._drop(entry, free=tier == HOST)
            self._counters["failures"]["budget" if isinstance(exc, CacheBudgetError) else "load"] += 1
            entry.loading = None
            self._notify()
            raise
        seconds = time.perf_counter() - entry.load_started
        entry.obj, entry.gpu_bytes, entry.host_bytes, entry.tier = obj, size, 0, GPU
        entry.users += entry.waiters
        entry.waiters = 0
        entry.uses = 0
        entry.loaded_seq = entry.last_seq = self._seq
        entry.last_time = self._clock()
        entry.loading = None
        self._record_load(entry, tier, seconds, size, prefetch)
        if (gpu := self.memories.get(GPU)) is not None:  # usable now, at its measured size
            gpu.insert(entry.model_id, entry.kind, size, self._refill_cost_s(entry.model_id, size, GPU),
                       entry.last_time, prefetch)
        self._notify()

    def _record_load(self, entry: _Entry, tier: int, seconds: float, size: int, prefetch: bool) -> None:
        self.costs.record(entry.model_id, entry.kind, tier, size, seconds)
        kind = KIND_NAMES[entry.kind]
        self._counters["loads"][kind][TIER_NAMES[tier]] += 1
        self._counters["load_seconds"][kind][TIER_NAMES[tier]] += seconds
        self._loads.append({"id": entry.model_id, "from": tier, "seconds": seconds,
                            "prefetch": prefetch and not entry.placed, "placement": prefetch and entry.placed})

    # -- room -------------------------------------------------------------------------------
    async def _make_room(self, need: int, model_id: str, evict: bool, holding: frozenset = frozenset(),
                         keep: frozenset = frozenset(), spare: frozenset = frozenset()) -> None:
        """Free device bytes until `need` more fit (caller holds self._room). Victims in the
        policy's order, unpinned ones first, then those in `spare` (what queued requests need);
        pinned ones only when nothing else makes room (a pin is the coordinator's advice: a
        request is never refused for one; counted in counters()["pins_overridden"]). Entries in
        `keep` are never victims. Raises _NoRoom, transient when entries that other requests use
        or load stand in the way (`holding`: what this request already holds, which no wait can
        free)."""
        if need > self.gpu_budget:
            raise _NoRoom(f"it needs {need} bytes, more than the whole device budget "
                          f"(control.gpu_budget_bytes={self.gpu_budget})", transient=False)
        free = self.gpu_budget - self.gpu_used()
        if need <= free:
            return
        # on the device or reserved there (a load in progress)
        on_gpu = [e for e in self._entries.values() if e.gpu_bytes > 0 and e.model_id != model_id]
        idle = [e for e in on_gpu if self._evictable(e) and e.model_id not in keep]
        if not evict or free + sum(e.gpu_bytes for e in idle) < need:
            pinned = sum(e.gpu_bytes for e in idle if e.model_id in self.pins)
            busy = [e for e in on_gpu if not self._evictable(e) or e.model_id in keep]
            reason = (f"it needs {need} bytes and control.gpu_budget_bytes={self.gpu_budget} has "
                      f"{free} free, {pinned} pinned and {sum(e.gpu_bytes for e in busy)} in use "
                      "or loading")
            if not evict:
                raise _NoRoom(reason + " (prefetch loads only into free budget)", transient=False)
            # room may come once other requests let go of what they use or load
            others = sum(e.gpu_bytes for e in busy if e.model_id not in holding)
            raise _NoRoom(reason, transient=free + sum(e.gpu_bytes for e in idle) + others >= need)
        self._seq += 1  # the ranking is an event of the cache's logical clock
        ranked = self._rank(idle, GPU)  # pinned ones last
        if spare:  # then spared ones just before the pinned (a stable sort keeps the policy's order)
            ranked.sort(key=lambda e: (e.model_id in self.pins, e.model_id in spare))
        for victim in ranked:
            if self._evictable(victim):
                if victim.model_id in self.pins:
                    self._counters["pins_overridden"] += 1
                    logger.info("evicting pinned %r: %r needs the room and nothing else frees it",
                                victim.model_id, model_id)
                await self._demote(victim, keep=model_id)
                if self.gpu_budget - self.gpu_used() >= need:
                    return
        raise _NoRoom("entries were taken while evicting", transient=True)

    def _evictable(self, entry: _Entry) -> bool:
        return entry.users == 0 and entry.waiters == 0 and entry.loading is None and entry.moving is None

    async def _demote(self, entry: _Entry, keep: str) -> None:
        """Move `entry` off the device: to the host tier when it fits there (never dropping
        `keep`'s host copy for it: that is what is being loaded), else drop it."""
        if entry.prefetched and entry.uses == 0:
            self._counters["placed" if entry.placed else "prefetch"]["wasted"] += 1
        entry.prefetched = entry.placed = False
        self._unclaimed(entry)
        if (gpu := self.memories.get(GPU)) is not None:
            gpu.evict(entry.model_id, self._clock())
        if not (entry.gpu_bytes <= self.host_budget and self._make_host_room(entry.gpu_bytes, keep)):
            self._drop(entry, free=True)
            return
        if (host := self.memories.get(HOST)) is not None:  # after the drops that made its room
            host.insert(entry.model_id, entry.kind, entry.gpu_bytes,
                        self._refill_cost_s(entry.model_id, entry.gpu_bytes, HOST), self._clock(), prefetch=True)
        # Marked before the first await, so no request takes it meanwhile; the move is a task of
        # its own, so a caller cancelled meanwhile cannot leave it half recorded.
        entry.moving = asyncio.get_running_loop().create_future()
        entry.host_bytes = entry.gpu_bytes
        await asyncio.shield(asyncio.create_task(self._move_to_host(entry)))

    async def _move_to_host(self, entry: _Entry) -> None:
        try:
            entry.obj = await asyncio.to_thread(self.source.to_host, entry.obj)
            entry.tier, entry.gpu_bytes = HOST, 0
            self._evicted.append({"id": entry.model_id, "to": HOST})
            self._counters["evictions"]["host"] += 1
        except Exception as exc:
            logger.warning("moving %r to host memory failed, dropping it: %s", entry.model_id, exc)
            self._drop(entry, free=True)
        finally:
            moving, entry.moving = entry.moving, None
            moving.set_result(None)

    def _make_host_room(self, need: int, keep: str) -> bool:
        """Drop host-tier entries (policy order, pinned last) until `need` bytes fit."""
        resting = [e for e in self._entries.values()
                   if e.tier == HOST and e.loading is None and e.model_id != keep]
        if self.host_budget - self.host_used() + sum(e.host_bytes for e in resting) < need:
            return False
        for victim in self._rank(resting, HOST):
            if self.host_budget - self.host_used() >= need:
                break
            self._drop(victim, free=True)
        return self.host_budget - self.host_used() >= need

    def _rank(self, entries: list[_Entry], tier: int) -> list[_Entry]:
        """Entries in the policy's eviction order, pinned ones last."""
        if not entries:
            return []
        memory = self.memories.get(tier)
        if memory is not None:  # a stateful policy: its memory of this tier orders them
            by_id = {e.model_id: e for e in entries}
            order = [by_id[m] for m in memory.victim_order(list(by_id))]
            return [e for e in order if e.model_id not in self.pins] + [e for e in order if e.model_id in self.pins]
        view = self._view(entries, tier)
        pinned = np.array([e.model_id in self.pins for e in entries])
        order = propose_victims(self.policy, view, n=len(entries), pinned=pinned).tolist()
        rest = [i for i in range(len(entries)) if i not in set(order)]
        return [entries[i] for i in order + rest]

    def _view(self, entries: list[_Entry], tier: int) -> CacheView:
        def col(attr, dtype):
            return np.array([getattr(e, attr) for e in entries], dtype=dtype)

        sizes = np.array([e.gpu_bytes if tier == GPU else e.host_bytes for e in entries], np.int64)
        costs = [self._refill_cost_s(e.model_id, s, tier) for e, s in zip(entries, sizes)]
        return CacheView(
            key=col("key", np.int64), kind=col("kind", np.int8), uses=col("uses", np.int64),
            last_seq=col("last_seq", np.int64), loaded_seq=col("loaded_seq", np.int64),
            last_time=col("last_time", np.float64), seq=np.int64(self._seq),
            now=np.float64(self._clock()), size_bytes=sizes,
            load_cost_s=np.array(costs, np.float64))

    def _refill_cost_s(self, model_id: str, size: int, tier: int) -> float:
        """What evicting `model_id` from `tier` costs: the copy back from host when the host tier
        can take it, else a load from its source."""
        back = HOST if tier == GPU and size <= self.host_budget else self.source.source_tier(model_id)
        return self.load_cost_s(model_id)[back]

    def _unclaimed(self, entry: _Entry) -> None:
        """`entry` leaves the device (or its load fails) before the request it was loaded ahead
        for took it."""
        if entry.ahead:
            entry.ahead = False
            self._counters["ahead"]["wasted"] += 1

    def _drop(self, entry: _Entry, free: bool) -> None:
        self._unclaimed(entry)
        if self._entries.get(entry.model_id) is entry:
            del self._entries[entry.model_id]
            for memory in self.memories.values():  # it leaves whichever tier holds it
                memory.evict(entry.model_id, self._clock())
        if entry.tier in (GPU, HOST) and entry.obj is not None:
            self._evicted.append({"id": entry.model_id, "to": REMOTE})
            self._counters["evictions"]["remote"] += 1
        if free and entry.obj is not None:
            self.source.free(entry.obj)
        entry.obj, entry.gpu_bytes, entry.host_bytes, entry.tier = None, 0, 0, REMOTE

    def _notify(self) -> None:
        self._released.set()
        self._released = asyncio.Event()

    # -- what it holds and costs ------------------------------------------------------------
    def gpu_used(self) -> int:
        return sum(e.gpu_bytes for e in self._entries.values())

    def host_used(self) -> int:
        return sum(e.host_bytes for e in self._entries.values())

    def size_estimate(self, model_id: str) -> int:
        """Device bytes a load of `model_id` reserves (deployments/load_costs.py)."""
        return self.costs.size(model_id)

    def load_cost_s(self, model_id: str) -> list[float]:
        """Seconds to bring `model_id` onto the device from [gpu, host, disk, remote]: measured
        means, else size-based estimates (deployments/load_costs.py)."""
        return self.costs.seconds(model_id)

    def tiers(self) -> dict[str, int]:
        """{model id: GPU or HOST} for every settled entry (loads in progress: `loading()`)."""
        return {m: e.tier for m, e in self._entries.items() if e.tier in (GPU, HOST) and not e.loading}

    def loading(self) -> list[str]:
        return [m for m, e in self._entries.items() if e.loading is not None]

    def loading_remaining_s(self) -> float:
        """Expected seconds left of the loads in progress (expected cost minus elapsed)."""
        now = time.perf_counter()
        return sum(max(0.0, self.load_cost_s(e.model_id)[e.load_from] - (now - e.load_started))
                   for e in self._entries.values() if e.loading is not None)

    def resident(self, model_id: str) -> bool:
        entry = self._entries.get(model_id)
        return entry is not None and entry.tier == GPU and entry.loading is None

    def objects(self) -> dict[str, object]:
        """{model id: loaded object} of the entries settled on the device."""
        return {m: e.obj for m, e in self._entries.items() if e.tier == GPU and not e.loading}

    def in_use(self) -> int:
        return sum(e.users + e.waiters for e in self._entries.values())

    def value_s(self) -> float:
        """Load seconds the entries held have saved: for each, the requests it served since it
        came onto the device x (seconds from its source - seconds from the tier it is in)."""
        total = 0.0
        for model_id, entry in self._entries.items():
            if entry.tier in (GPU, HOST) and entry.loading is None:
                cost = self.load_cost_s(model_id)
                total += entry.uses * max(0.0, cost[self.source.source_tier(model_id)] - cost[entry.tier])
        return total

    def drain_events(self) -> dict:
        """Loads, evictions and prefetch hits since the previous drain (for the coordinator)."""
        out = {"loads": self._loads, "evicted": self._evicted, "prefetch_hits": self._prefetch_hits}
        self._loads, self._evicted, self._prefetch_hits = [], [], []
        return out

    def counters(self) -> dict:
        """Monotonic counters: hits by tier found (gpu, host), misses by source tier (disk,
        remote), requests that joined a load in flight, loads and load-seconds by kind and
        source tier, prefetches started/used/wasted, evictions by destination, failures."""
        return copy.deepcopy(self._counters)

    def state(self) -> dict:
        """What the cache holds by tier, with bytes, users and pins (for debugging)."""
        def describe(e: _Entry) -> dict:
            return {"bytes": e.gpu_bytes or e.host_bytes, "users": e.users, "uses": e.uses,
                    "pinned": e.model_id in self.pins, "prefetched": e.prefetched}

        held = {name: {m: describe(e) for m, e in self._entries.items() if e.tier == tier and not e.loading}
                for name, tier in (("gpu", GPU), ("host", HOST))}
        return {**held, "loading": self.loading(), "pins": sorted(self.pins),
                "gpu_budget_bytes": self.gpu_budget, "gpu_used_bytes": self.gpu_used(),
                "host_budget_bytes": self.host_budget, "host_used_bytes": self.host_used(),
                "policy": getattr(self.policy, "name", type(self.policy).__name__),
                "counters": self.counters()}


def _zero_counters() -> dict:
    by_kind = {kind: {TIER_NAMES[t]: 0 for t in (HOST, DISK, REMOTE)} for kind in KIND_NAMES}
    return {"hits": {"gpu": 0, "host": 0}, "misses": {"disk": 0, "remote": 0}, "joined": 0,
            "loads": by_kind, "load_seconds": {k: {t: 0.0 for t in v} for k, v in by_kind.items()},
            "prefetch": {"started": 0, "used": 0, "wasted": 0},
            "placed": {"started": 0, "used": 0, "wasted": 0},
            "ahead": {"started": 0, "used": 0, "wasted": 0},
            "evictions": {"host": 0, "remote": 0}, "failures": {"budget": 0, "load": 0},
            "pins_overridden": 0}


def _retrieved(task: asyncio.Task) -> None:
    """Done callback of a load started ahead: its failure is met by the request's own acquire
    (which loads again), so it is read here rather than logged as never retrieved."""
    if not task.cancelled():
        task.exception()
