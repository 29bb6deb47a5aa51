"""Adapter-cache simulation under the rules of ``t2i trace cache``.

Rules: requests in timestamp order (file order breaks ties); a request's adapters are accessed in
order, ControlNets as listed then LoRAs as listed; one cache of K adapter slots per instance; a
miss is a load; prefetch loads are loads too. The cache is mechanism only: which slot to free is
asked of the eviction policy, through the registry, on a ``CacheView``.

Two engines, one semantics (a test holds them equal):
- ``lockstep``: every (instance, capacity) cache is a row of a 2-D array and all advance one
  access per round, numpy doing the work; independent caches only, no prefetch.
- ``sequential``: one access at a time in global time order; handles prefetch, policies that
  need cross-instance state and policies that remember (``StatefulEviction``: each cache owns the
  policy's memory and reports its hits, misses, loads and evictions to it). The reference the
  other is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.eviction import (EMPTY, EVICTION, NEVER, CacheView, EvictionMemory, EvictionPolicy, eviction_keys,
                               is_stateful, lex_argmin)
from policies.prefetch import PREFETCH, PrefetchContext, PrefetchPolicy
from trace_replay.progress import progress
from trace_replay.table import CONTROLNET, RequestTable


@dataclass(frozen=True)
class AccessStream:
    """Adapter accesses grouped by instance, in time order within each instance."""

    instance: np.ndarray  # int32, non-decreasing
    key: np.ndarray  # int64: ControlNet id, or n_controlnets + LoRA id
    kind: np.ndarray  # int8
    time: np.ndarray  # float64 seconds
    request: np.ndarray  # int64 request rank in time order
    seq: np.ndarray  # int64 ordinal of the access within its instance
    next_seq: np.ndarray  # int64 seq of the next access to the same key on the instance, or NEVER
    starts: np.ndarray  # int64 per instance: first access
    lengths: np.ndarray  # int64 per instance: number of accesses
    n_keys: int
    n_requests: int
    instances: list[str]

    @property
    def n_accesses(self) -> int:
        return int(self.key.shape[0])


def access_stream(table: RequestTable) -> AccessStream:
    t = table.sorted_by_time()
    n_cn = len(t.controlnet_ids)
    req = t.adapter_request()
    key = np.where(t.adapter_kind == CONTROLNET, t.adapter_id, n_cn + t.adapter_id).astype(np.int64)
    inst = t.instance[req]
    order = np.argsort(inst, kind="stable")  # group by instance, time order kept inside
    inst, key, req = inst[order], key[order], req[order]
    n_inst = len(t.instances)
    lengths = np.bincount(inst, minlength=n_inst).astype(np.int64)
    starts = np.zeros(n_inst, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    seq = np.arange(key.size, dtype=np.int64) - starts[inst]
    n_keys = n_cn + len(t.lora_ids)
    combined = inst.astype(np.int64) * max(n_keys, 1) + key
    by_key = np.argsort(combined, kind="stable")
    same = combined[by_key[1:]] == combined[by_key[:-1]]
    next_seq = np.full(key.size, NEVER, dtype=np.int64)
    next_seq[by_key[:-1][same]] = seq[by_key[1:][same]]
    return AccessStream(inst.astype(np.int32), key, t.adapter_kind[order], t.time[req], req, seq,
                        next_seq, starts, lengths, n_keys, len(t), list(t.instances))


@dataclass
class CacheResult:
    policy: str
    prefetch: str
    capacities: list[int]
    requests: int
    accesses: int
    misses: np.ndarray  # (instances, capacities) demand misses (= demand loads)
    prefetch_loads: np.ndarray  # (instances, capacities)
    instance_accesses: np.ndarray  # (instances,)
    instances: list[str]

    def summary(self, capacity: int) -> dict[str, object]:
        j = self.capacities.index(capacity)
        misses, pre = int(self.misses[:, j].sum()), int(self.prefetch_loads[:, j].sum())
        return {
            "policy": self.policy, "prefetch": self.prefetch, "capacity": capacity,
            "requests": self.requests, "accesses": self.accesses, "instances": len(self.instances),
            "hits": self.accesses - misses, "misses": misses, "prefetch_loads": pre,
            "loads": misses + pre, "miss_ratio": misses / self.accesses if self.accesses else 0.0,
        }


class _Slots:
    """Per-slot state of many caches, rows = caches."""

    def __init__(self, rows: int, slots: int) -> None:
        self.key = np.full((rows, slots), EMPTY, dtype=np.int64)
        self.kind = np.zeros((rows, slots), dtype=np.int8)
        self.uses = np.zeros((rows, slots), dtype=np.int64)
        self.last_seq = np.full((rows, slots), -1, dtype=np.int64)
        self.loaded_seq = np.full((rows, slots), -1, dtype=np.int64)
        self.last_time = np.zeros((rows, slots), dtype=np.float64)
        self.next_seq = np.full((rows, slots), NEVER, dtype=np.int64)

    def view(self, rows: np.ndarray | slice, seq: np.ndarray, now: np.ndarray, future: bool) -> CacheView:
        return CacheView(self.key[rows], self.kind[rows], self.uses[rows], self.last_seq[rows],
                         self.loaded_seq[rows], self.last_time[rows], seq, now,
                         self.next_seq[rows] if future else None)


ALL_FIELDS = ("kind", "uses", "last_seq", "loaded_seq", "last_time", "next_seq")


def simulate_lockstep(stream: AccessStream, policy: EvictionPolicy, capacities: list[int],
                      show_progress: bool = False, label: str = "",
                      subset: np.ndarray | None = None) -> np.ndarray:
    """Misses per (instance, capacity) for a policy over independent caches.

    Row ``i * len(capacities) + j`` is instance i's cache at capacity j; instances are ordered by
    stream length so the caches still active in a round are a prefix, and every array operation
    works on a view, never a gathered copy. Only the fields the policy reads are maintained.
    """
    if not policy.independent_caches:
        raise ValueError(f"policy {policy.name!r} needs a global time order: use simulate_sequential")
    caps = np.asarray(capacities, dtype=np.int64)
    n_c, width = caps.size, int(caps.max())
    inst = np.arange(stream.lengths.size) if subset is None else np.asarray(subset, dtype=np.int64)
    by_len = inst[np.argsort(-stream.lengths[inst], kind="stable")]
    lengths, starts = stream.lengths[by_len], stream.starts[by_len]
    rows = lengths.size * n_c
    s = _Slots(rows, width)
    fields = set(getattr(policy, "fields", ALL_FIELDS))
    future = policy.needs_future
    if future:
        fields.add("next_seq")
    allowed = np.arange(width)[None, :] < np.tile(caps, lengths.size)[:, None]
    misses = np.zeros(rows, dtype=np.int64)
    filled = np.zeros(rows, dtype=np.int64)
    cap_rows = np.tile(caps, lengths.size)
    flat = {f: getattr(s, f).reshape(-1) for f in ALL_FIELDS if f in fields}
    key_flat = s.key.reshape(-1)
    row_base = np.arange(rows, dtype=np.int64) * width
    rounds = int(lengths.max()) if lengths.size else 0
    neg_len = -lengths
    bar = progress(total=rounds, desc=label or f"{policy.name} cache", disable=not show_progress)
    for r in range(rounds):
        n_act = int(np.searchsorted(neg_len, -r, side="left"))  # instances with length > r
        n_rows = n_act * n_c
        a = starts[:n_act] + r
        x = np.repeat(stream.key[a], n_c)
        key = s.key[:n_rows]
        eq = key == x[:, None]
        hit = eq.any(axis=1)
        pos = eq.argmax(axis=1)
        miss = ~hit
        if not hit.all():
            # slots fill in order and are never emptied, so the first free slot is the fill count
            fill = filled[:n_rows]
            fills = miss & (fill < cap_rows[:n_rows])
            pos = np.where(fills, fill, pos)
            fill += fills
            evict = miss & ~fills
            if evict.any():
                now = np.repeat(stream.time[a], n_c)
                view = s.view(slice(0, n_rows), np.full(n_rows, r, np.int64), now, future)
                victim = lex_argmin(policy.priority(view), allowed[:n_rows])
                pos = np.where(evict, victim, pos)
            misses[:n_rows] += miss
        fi = row_base[:n_rows] + pos
        key_flat[fi] = x
        if "uses" in flat:
            flat["uses"][fi] = np.where(hit, flat["uses"][fi] + 1, 1)
        if "loaded_seq" in flat:
            flat["loaded_seq"][fi] = np.where(hit, flat["loaded_seq"][fi], r)
        if "last_seq" in flat:
            flat["last_seq"][fi] = r
        if "last_time" in flat:
            flat["last_time"][fi] = np.repeat(stream.time[a], n_c)
        if "kind" in flat:
            flat["kind"][fi] = np.repeat(stream.kind[a], n_c)
        if "next_seq" in flat:
            flat["next_seq"][fi] = np.repeat(stream.next_seq[a], n_c)
        if r % 512 == 0:
            bar.update(min(512, rounds - r))
    bar.close()
    out = np.zeros((stream.lengths.size, n_c), dtype=np.int64)
    out[by_len] = misses.reshape(lengths.size, n_c)
    return out


_SHARED: AccessStream | None = None  # handed to forked workers without pickling 100s of MB


def simulate_all(stream: AccessStream, policy: EvictionPolicy, capacities: list[int],
                 show_progress: bool = False, subset: np.ndarray | None = None) -> np.ndarray:
    """The fastest exact engine for an independent-cache policy: one stack pass or lock-step."""
    if getattr(policy, "stack_algorithm", False):
        from trace_replay.stack_sim import simulate_stack

        return simulate_stack(stream, policy, capacities, show_progress, subset=subset)
    return simulate_lockstep(stream, policy, capacities, show_progress, subset=subset)


def _sweep_task(args: tuple[str, list[int], np.ndarray]) -> tuple[str, np.ndarray]:
    name, capacities, subset = args
    assert _SHARED is not None
    return name, simulate_all(_SHARED, EVICTION.create(name), capacities, subset=subset)


def sweep(stream: AccessStream, policy_names: list[str], capacities: list[int], workers: int = 1,
          show_progress: bool = False) -> dict[str, np.ndarray]:
    """Misses per (instance, capacity) for several independent-cache policies.

    With workers > 1, lock-step policies' instances are dealt into two halves (alternating by
    length, so both take about as many rounds) and the pieces run in forked processes.
    """
    global _SHARED
    out = {name: np.zeros((stream.lengths.size, len(capacities)), dtype=np.int64) for name in policy_names}
    if workers <= 1 or stream.lengths.size < 2:
        for name in progress(policy_names, desc="policies", disable=not show_progress):
            out[name] = simulate_all(stream, EVICTION.create(name), capacities, show_progress)
        return out
    import multiprocessing as mp

    by_len = np.argsort(-stream.lengths, kind="stable")
    halves = [by_len[0::2], by_len[1::2]]
    tasks = []
    for name in policy_names:
        # a stack pass costs about the same per round whatever the lane count: halving it would
        # double the work, so stack policies run whole and the lock-step ones in halves
        whole = getattr(EVICTION.factory(name), "stack_algorithm", False)
        tasks += [(name, list(capacities), by_len)] if whole else [(name, list(capacities), h) for h in halves]
    tasks.sort(key=lambda t: -int(stream.lengths[t[2]].sum()))  # biggest first, for the pool's balance
    _SHARED = stream
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            for name, misses in progress(pool.imap_unordered(_sweep_task, tasks), total=len(tasks),
                                         desc="cache sweeps", disable=not show_progress):
                out[name] += misses  # each half fills its own rows, the rest are zero
    finally:
        _SHARED = None
    return out


def simulate_sequential(stream: AccessStream, policy: EvictionPolicy, capacity: int,
                        prefetch: PrefetchPolicy | None = None, seed: int = 0,
                        show_progress: bool = False,
                        loads_by_kind: np.ndarray | None = None,
                        prefetch_used: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(misses, prefetch loads) per instance, one access at a time in global time order.

    ``loads_by_kind``: an int64 array indexed by kind code; every load (demand or prefetch) adds
    one to its adapter's kind, for callers that price loads by kind. ``prefetch_used``: an int64
    array per instance, adding one for each prefetched adapter that served a request before it
    was evicted (the rest of the prefetch loads were wasted)."""
    n_inst = len(stream.instances)
    s = _Slots(n_inst, capacity)
    where: list[dict[int, int]] = [{} for _ in range(n_inst)]  # key -> slot, per instance
    misses = np.zeros(n_inst, dtype=np.int64)
    pre = np.zeros(n_inst, dtype=np.int64)
    future = policy.needs_future
    rng = np.random.default_rng(seed)
    key_uses = np.zeros(stream.n_keys, dtype=np.int64)  # cluster-wide, for prefetchers
    key_last = np.full(stream.n_keys, -np.inf)
    order = np.lexsort((stream.seq, stream.request))  # global time order, adapters as listed
    n = order.size
    key_kind = np.zeros(stream.n_keys, dtype=np.int8)  # a prefetched key's kind, before any access here
    key_kind[stream.key] = stream.kind
    # a policy that remembers gets one memory per cache; slots count 1 each (no sizes or costs here)
    memory = [policy.new_memory(capacity) for _ in range(n_inst)] if is_stateful(policy) else None
    unused: list[set[int]] = [set() for _ in range(n_inst)]  # prefetched, not yet requested
    for idx, a in enumerate(progress(order.tolist(), desc=f"{policy.name} cache", disable=not show_progress)):
        i, k, q = int(stream.instance[a]), int(stream.key[a]), int(stream.seq[a])
        slot = where[i].get(k)
        mem = memory[i] if memory is not None else None
        if slot is None:
            misses[i] += 1
            if loads_by_kind is not None:
                loads_by_kind[stream.kind[a]] += 1
            if mem is not None:
                mem.on_miss(k, float(stream.time[a]))
            slot = _free_or_victim(s, where[i], i, policy, q, float(stream.time[a]), future, mem)
            if unused[i]:
                unused[i].discard(int(s.key[i, slot]))  # the victim, if an unused prefetch: wasted
            s.uses[i, slot], s.loaded_seq[i, slot] = 1, q
            if mem is not None:
                mem.on_insert(k, int(stream.kind[a]), 1.0, None, float(stream.time[a]))
        else:
            s.uses[i, slot] += 1
            if mem is not None:
                mem.on_hit(k, float(stream.time[a]))
            if unused[i] and k in unused[i]:
                unused[i].discard(k)
                if prefetch_used is not None:
                    prefetch_used[i] += 1
        s.key[i, slot], s.kind[i, slot] = k, stream.kind[a]
        s.last_seq[i, slot], s.last_time[i, slot] = q, stream.time[a]
        s.next_seq[i, slot] = stream.next_seq[a]
        where[i][k] = slot
        if prefetch is None:
            continue
        key_uses[k] += 1
        key_last[k] = stream.time[a]
        nxt = order[idx + 1] if idx + 1 < n else -1
        if nxt >= 0 and stream.request[nxt] == stream.request[a] and stream.instance[nxt] == i:
            continue  # prefetch once the whole request is served
        now = float(stream.time[a])
        ctx = PrefetchContext(s.view(i, np.int64(q), np.float64(now), future), key_uses, key_last, q, now)
        for pk in prefetch.propose(ctx, rng).tolist():
            if pk in where[i]:
                continue
            slot = _free_or_victim(s, where[i], i, policy, q, now, future, mem)
            unused[i].discard(int(s.key[i, slot]))  # a prefetch evicted unused was wasted
            unused[i].add(pk)
            s.key[i, slot], s.uses[i, slot], s.loaded_seq[i, slot] = pk, 0, q
            if mem is not None:
                mem.on_insert(pk, int(key_kind[pk]), 1.0, None, now, prefetch=True)
            s.kind[i, slot] = key_kind[pk]  # (was left at the slot's previous kind until accessed)
            if loads_by_kind is not None:
                loads_by_kind[key_kind[pk]] += 1
            s.last_seq[i, slot], s.last_time[i, slot] = q, now
            s.next_seq[i, slot] = _next_use(stream, i, pk, q) if future else NEVER
            where[i][pk] = slot
            pre[i] += 1
    return misses, pre


def _free_or_victim(s: _Slots, where: dict[int, int], i: int, policy: EvictionPolicy,
                    seq: int, now: float, future: bool, memory: EvictionMemory | None = None) -> int:
    """A free slot of cache i, or the policy's victim, which is unloaded here (mechanism)."""
    free = np.flatnonzero(s.key[i] == EMPTY)
    if free.size:
        return int(free[0])
    if memory is not None:  # the memory's order over the keys held; no view to build
        victim = memory.victim_order(list(where))[0]
        memory.on_evict(victim, now)
        return where.pop(victim)
    view = s.view(i, np.int64(seq), np.float64(now), future)
    slot = int(lex_argmin(eviction_keys(policy, view), np.ones(s.key.shape[1], dtype=bool)))
    del where[int(s.key[i, slot])]
    return slot


def _next_use(stream: AccessStream, inst: int, key: int, seq: int) -> int:
    lo, hi = stream.starts[inst], stream.starts[inst] + stream.lengths[inst]
    later = np.flatnonzero(stream.key[lo + seq + 1:hi] == key)
    return int(seq + 1 + later[0]) if later.size else int(NEVER)


def run_cache(table: RequestTable, policy_name: str, capacities: list[int], prefetch_name: str = "none",
              seed: int = 0, show_progress: bool = False, stream: AccessStream | None = None,
              engine: str = "auto") -> CacheResult:
    """Simulate one eviction policy (and prefetch policy) at each capacity, both by registry name."""
    if any(c < 1 for c in capacities):
        raise ValueError(f"capacities must be >= 1, got {capacities}")
    stream = stream or access_stream(table)
    policy = EVICTION.create(policy_name)
    prefetch = None if prefetch_name == "none" else PREFETCH.create(prefetch_name)
    n_inst = len(stream.instances)
    if engine == "auto":
        vectorised = prefetch is None and policy.independent_caches and not is_stateful(policy)
        engine = "fastest" if vectorised else "sequential"
    elif engine != "sequential" and is_stateful(policy):
        raise ValueError(f"policy {policy_name!r} remembers (ghosts, hands): only the sequential engine replays it")
    if engine in ("fastest", "lockstep", "stack"):
        if engine == "fastest":
            misses = simulate_all(stream, policy, capacities, show_progress)
        elif engine == "stack":
            from trace_replay.stack_sim import simulate_stack

            misses = simulate_stack(stream, policy, capacities, show_progress)
        else:
            misses = simulate_lockstep(stream, policy, capacities, show_progress)
        pre = np.zeros_like(misses)
    else:
        misses = np.zeros((n_inst, len(capacities)), dtype=np.int64)
        pre = np.zeros_like(misses)
        for j, c in enumerate(capacities):
            misses[:, j], pre[:, j] = simulate_sequential(stream, policy, c, prefetch, seed, show_progress)
    return CacheResult(policy_name, prefetch_name, list(capacities), stream.n_requests, stream.n_accesses,
                       misses, pre, stream.lengths.copy(), stream.instances)
