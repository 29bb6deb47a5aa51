"""One GPU worker: its GPU cache (slots + per-slot statistics), host and disk tiers, its queue.

The GPU cache is mechanism only. Which entries to evict is asked of an eviction policy from
``policies.eviction`` through its vectorised ``CacheView`` (here: one cache, 1-D arrays over this
worker's slots), exactly the interface the live store and ``trace_replay.cache_sim`` use. The
host and disk tiers are plain LRU by bytes: they model the machine's page cache and local SSD,
which no policy of ours manages.

A policy that remembers (``policies.eviction.is_stateful``) gets one ``EvictionMemory`` per worker
(``memory``, capacity the GPU byte budget, sizes in bytes, cost the entry's remote load cost): the
worker reports inserts and every removal to it, the engine reports hits and misses, and ``victims``
takes the memory's order. Stateless policies leave ``memory`` None and pay one check per event.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from policies.eviction import EMPTY, CacheView, EvictionMemory, EvictionPolicy
from policies.snapshot import DISK, GPU, HOST, REMOTE

_INT_MAX = np.iinfo(np.int64).max


class LRUBytes:
    """An LRU set of keys under a byte budget (host memory or local disk)."""

    __slots__ = ("items", "free", "cap")

    def __init__(self, cap_bytes: float) -> None:
        self.items: OrderedDict[int, float] = OrderedDict()
        self.cap = cap_bytes
        self.free = cap_bytes

    def touch_or_add(self, key: int, size: float) -> tuple | list:
        """Mark ``key`` used (adding it, evicting the oldest); returns the keys evicted."""
        if key in self.items:
            self.items.move_to_end(key)
            return ()
        if size > self.cap:
            return ()
        popped: tuple | list = ()
        while self.free < size:
            k, s = self.items.popitem(last=False)
            self.free += s
            popped = [*popped, k]
        self.items[key] = size
        self.free -= size
        return popped

    def clear(self) -> None:
        self.items.clear()
        self.free = self.cap


class Worker:
    """Per-worker state; slotted and array-backed so the event loop stays cheap."""

    __slots__ = ("idx", "slot_of", "free_slots", "key", "kind", "uses", "last_seq", "loaded_seq",
                 "last_time", "size", "cost", "free_bytes", "cap_bytes", "n_base", "clock", "queue",
                 "busy", "active", "free_since", "idle_s", "busy_s", "host", "disk", "last_prefetch",
                 "ready_at", "pinned", "_seq", "_now", "_view", "routable", "next_seq", "future",
                 "job_start", "exp_end", "exp_floor", "exp_queue", "pin_mask", "_lists", "memory",
                 "running", "ahead", "ahead_wasted")

    def __init__(self, idx: int, gpu_bytes: float, host_bytes: float, disk_bytes: float,
                 slots: int = 32, future: bool = False, memory: EvictionMemory | None = None) -> None:
        self.idx = idx
        self.slot_of: dict[int, int] = {}
        self.free_slots = list(range(slots - 1, -1, -1))
        self.key = np.full(slots, EMPTY, dtype=np.int64)
        self.kind = np.zeros(slots, dtype=np.int8)
        self.uses = np.zeros(slots, dtype=np.int64)
        self.last_seq = np.full(slots, -1, dtype=np.int64)
        self.loaded_seq = np.full(slots, -1, dtype=np.int64)
        self.last_time = np.zeros(slots, dtype=np.float64)
        self.size = np.zeros(slots, dtype=np.float64)
        self.cost = np.zeros(slots, dtype=np.float64)
        # offline policies only: next request needing the entry (oracle.py keeps it current)
        self.next_seq = np.full(slots, -1, dtype=np.int64)
        self.future = future
        self.cap_bytes = gpu_bytes
        self.free_bytes = gpu_bytes
        self.n_base = 0  # base models on the GPU (for a fixed model count, as Ray's multiplexing)
        self.clock = 0  # the cache's logical clock (CacheView.seq)
        self.queue: deque = deque()
        self.busy = False
        self.active = True  # serving or starting up (reserved by the autoscaler)
        self.routable = True  # the router may send it requests
        self.free_since = 0.0
        self.idle_s = 0.0  # accumulated in the loop; the conservation test checks it
        self.busy_s = 0.0
        self.host = LRUBytes(host_bytes) if host_bytes > 0 else None
        self.disk = LRUBytes(disk_bytes) if disk_bytes > 0 else None
        self.last_prefetch = -np.inf
        self.ready_at = 0.0  # when a starting replica becomes routable (the autoscaler sets it)
        # What the replica could report about its work (engine.py keeps them): when its running job
        # started and is expected to end, the floor of its expected remainder once late, and the
        # expected compute of its queued jobs. The job's true end is only in the event heap.
        self.job_start = 0.0
        self.exp_end = 0.0
        self.exp_floor = 0.0
        self.exp_queue = 0.0
        self.pinned: set[int] = set()  # keys placement wants kept (hot models), never victims
        # the same as a bool array over all keys, when the owner of ``pinned`` keeps one (the
        # coordinator does): one gather per eviction instead of a loop over the pins
        self.pin_mask: np.ndarray | None = None
        # One CacheView per worker over its live arrays, with 0-d clock arrays updated in place:
        # building a frozen view per eviction was a tenth of the loop's time.
        self._seq = np.zeros((), dtype=np.int64)
        self._now = np.zeros((), dtype=np.float64)
        self._view: CacheView | None = None
        # kind, size and load cost per slot as lists (they change only on insert), for a policy's
        # one-cache form (``eviction_order``): three fewer array conversions per eviction
        self._lists = (self.kind.tolist(), self.size.tolist(), self.cost.tolist())
        # a stateful policy's history of this GPU cache (None for a stateless policy)
        self.memory = memory
        self.running: list = []  # the keys the running job uses (policies.load_ahead's "earlier")
        # keys loaded ahead for queued requests (policies.load_ahead): key -> when its load ends
        self.ahead: dict[int, float] = {}
        self.ahead_wasted = 0  # loaded ahead, then evicted before their request started

    def _grow(self) -> None:
        n = self.key.shape[0]
        for name, fill in (("key", EMPTY), ("kind", 0), ("uses", 0), ("last_seq", -1), ("loaded_seq", -1),
                           ("last_time", 0.0), ("size", 0.0), ("cost", 0.0), ("next_seq", -1)):
            old = getattr(self, name)
            new = np.full(2 * n, fill, dtype=old.dtype)
            new[:n] = old
            setattr(self, name, new)
        self.free_slots = list(range(2 * n - 1, n - 1, -1))
        self._view = None  # the arrays were replaced
        self._lists = (self.kind.tolist(), self.size.tolist(), self.cost.tolist())

    def insert(self, key: int, kind: int, size: float, cost: float, now: float, uses: int = 0) -> None:
        if not self.free_slots:
            self._grow()
        s = self.free_slots.pop()
        self.slot_of[key] = s
        self.key[s], self.kind[s], self.size[s], self.cost[s] = key, kind, size, cost
        kl, sl, cl = self._lists  # the values as the arrays hold them (kind 0-2 fits int8)
        kl[s], sl[s], cl[s] = kind, float(size), float(cost)
        self.uses[s], self.last_seq[s], self.loaded_seq[s], self.last_time[s] = uses, self.clock, self.clock, now
        self.next_seq[s] = -1  # unknown: the oracle looks it up before the next eviction
        self.free_bytes -= size
        if kind == 2:
            self.n_base += 1
        if self.memory is not None:  # uses 0: a prefetch (CacheView's "unused prefetch")
            self.memory.on_insert(key, kind, size, cost, now, prefetch=uses == 0)

    def tier_of(self, key: int) -> int:
        """The fastest tier holding ``key`` here: GPU, HOST, DISK or REMOTE (policies.snapshot)."""
        if key in self.slot_of:
            return GPU
        if self.host is not None and key in self.host.items:
            return HOST
        return DISK if self.disk is not None and key in self.disk.items else REMOTE

    def lacks_room(self, size: float, need_base: bool, max_base: int | None) -> bool:
        """Whether ``size`` more bytes (a base model when ``need_base``, under a fixed count
        ``max_base``) need an eviction first."""
        return size > self.free_bytes or (need_base and max_base is not None and self.n_base >= max_base)

    def remove(self, key: int, now: float) -> None:
        """Drop ``key`` from the GPU (an eviction, or the GPU cleared); ``now`` for the memory."""
        if self.memory is not None:
            self.memory.on_evict(key, now)
        if self.ahead and self.ahead.pop(key, None) is not None:
            self.ahead_wasted += 1
        s = self.slot_of.pop(key)
        self.free_bytes += self.size[s]
        if self.kind[s] == 2:
            self.n_base -= 1
        self.key[s] = EMPTY
        self.free_slots.append(s)

    def view(self, now: float) -> CacheView:
        """The cache as a policy sees it (read-only by contract; valid until the next change)."""
        if self._view is None:
            self._view = CacheView(self.key, self.kind, self.uses, self.last_seq, self.loaded_seq,
                                   self.last_time, self._seq, self._now,
                                   self.next_seq if self.future else None, self.size, self.cost)
        self._seq[...] = self.clock
        self._now[...] = now
        return self._view

    def victims(self, policy: EvictionPolicy, now: float, need_bytes: float, need_base: bool,
                max_base: int | None, protect: tuple) -> list[int] | None:
        """Keys to evict, best victim first, until ``need_bytes`` fit (and a base-model slot is free
        under ``max_base``); None if even evicting every allowed entry would not make room.

        ``protect``: keys of the request being served, never evicted under it. Victims are taken in
        the policy's key order, computed once (the policy is pure, so the order of the remaining
        entries does not change as earlier ones go).
        """
        order_of = getattr(policy, "eviction_order", None)  # the policy's one-cache form (cost-aware)
        if order_of is not None:
            return self._victims_in_order(order_of, need_bytes, need_base, max_base, protect)
        if self.memory is not None:  # a policy that remembers: its memory orders the keys
            return self._victims_remembered(need_bytes, need_base, max_base, protect)
        allowed = self.key != EMPTY
        for k in protect:
            s = self.slot_of.get(k)
            if s is not None:
                allowed[s] = False
        if self.pin_mask is not None:
            allowed &= ~self.pin_mask[self.key]  # EMPTY slots index the last key: already not allowed
        else:
            for k in self.pinned:
                s = self.slot_of.get(k)
                if s is not None:
                    allowed[s] = False
        keys = policy.priority(self.view(now))
        cand = allowed.nonzero()[0]
        if cand.size == 0:
            return None if need_bytes > self.free_bytes else []
        if len(keys) == 1:  # one key (LRU, LFU's packed key): a stable argsort is the same order
            order = cand[np.argsort(np.asarray(keys[0])[cand], kind="stable")]
        elif len(keys) == 2:  # cost-aware's (utility, last use): no generator on the hot path
            order = cand[np.lexsort((np.asarray(keys[1])[cand], np.asarray(keys[0])[cand]))]
        else:
            order = cand[np.lexsort(tuple(np.asarray(k)[cand] for k in reversed(keys)))]
        return self._take_until_room(order.tolist(), need_bytes, need_base, max_base)

    def _take_until_room(self, slots: list[int], need_bytes: float, need_base: bool,
                         max_base: int | None) -> list[int] | None:
        """The keys of ``slots`` (best victim first) up to the first prefix that frees
        ``need_bytes`` (and a base-model slot under ``max_base``); None if all of them do not."""
        kind, size, _ = self._lists
        key = self.key
        out: list[int] = []
        free, n_base = self.free_bytes, self.n_base
        base_ok = not need_base or max_base is None or n_base < max_base
        for s in slots:
            if free >= need_bytes and base_ok:
                break
            out.append(int(key[s]))
            free += size[s]
            if kind[s] == 2:
                n_base -= 1
                base_ok = not need_base or max_base is None or n_base < max_base
        if free < need_bytes or not base_ok:
            return None
        return out

    def _victims_in_order(self, order_of, need_bytes: float, need_base: bool, max_base: int | None,
                          protect: tuple) -> list[int] | None:
        """``victims`` through the policy's ``eviction_order`` over plain lists: the same
        candidates (occupied, not protected, not pinned), order and stopping rule."""
        pinned = self.pinned
        cand = [s for k, s in self.slot_of.items() if k not in protect and k not in pinned]
        if not cand:
            return None if need_bytes > self.free_bytes else []
        kind, size, cost = self._lists
        order = order_of(cand, kind, self.uses.tolist(), self.last_seq.tolist(), self.clock, size, cost)
        return self._take_until_room(order, need_bytes, need_base, max_base)

    def _victims_remembered(self, need_bytes: float, need_base: bool, max_base: int | None,
                            protect: tuple) -> list[int] | None:
        """``victims`` in the order of the stateful policy's memory: the same candidates
        (occupied, not protected, not pinned) and stopping rule. The order is asked once: the
        memory only reads, and it changes only when the caller reports the evictions."""
        pinned, slot_of = self.pinned, self.slot_of
        cand = [k for k in slot_of if k not in protect and k not in pinned]
        if not cand:
            return None if need_bytes > self.free_bytes else []
        return self._take_until_room([slot_of[k] for k in self.memory.victim_order(cand)], need_bytes,
                                     need_base, max_base)

    def clear_gpu(self, now: float) -> list[int]:
        """Drop every GPU entry (the replica stops); returns their keys."""
        keys = list(self.slot_of)
        for k in keys:
            self.remove(k, now)
        return keys
