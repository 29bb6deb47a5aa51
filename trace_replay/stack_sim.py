"""One pass for every capacity: Mattson's stack processing for policies with the inclusion property.

A policy whose eviction order does not depend on the cache size (LRU: recency; Belady MIN: next
use) is a stack algorithm (Mattson et al., 1970): the size-k cache always holds the top k entries
of one priority stack, so a single pass finds, for each access, the depth at which it hits, and
misses(K) = accesses - hits at depth < K for every K at once. Policies opt in with
``stack_algorithm = True``; their priorities still come from ``policy.priority`` on a CacheView.

Update on an access to x found at depth d (or at the first empty depth, or falling off the end):
x goes on top; walking down levels 1..d-1, the entry the policy would evict first between the one
carried from above and the one at that level is carried further down (starting with the old
top); the last carried entry lands at depth d. The carried entry at level k is the
policy's victim among old[0..k-1], a running (prefix) minimum, so the walk is vectorised.
"""

from __future__ import annotations

import numpy as np

from policies.eviction import EMPTY, NEVER, CacheView, EvictionPolicy
from trace_replay.progress import progress


def _single_key(keys: tuple[np.ndarray, ...], depth: int) -> np.ndarray:
    """One int64 key with the same order as the tuple, position breaking ties (strict order)."""
    if len(keys) == 1 and np.asarray(keys[0]).dtype.kind in "iu":
        k = np.asarray(keys[0], dtype=np.int64)
        # keys here are unique per lane for LRU/Belady; position only matters for true ties
        return k
    flat = [np.asarray(k).reshape(-1) for k in keys]
    n, width = np.asarray(keys[0]).shape
    lane = np.repeat(np.arange(n), width)
    pos = np.tile(np.arange(width), n)
    order = np.lexsort((pos, *reversed(flat), lane))
    rank = np.empty(n * width, dtype=np.int64)
    rank[order] = np.arange(n * width) % width
    return rank.reshape(n, width)


def simulate_stack(stream, policy: EvictionPolicy, capacities: list[int], show_progress: bool = False,
                   subset: np.ndarray | None = None) -> np.ndarray:
    """Misses per (instance, capacity), all capacities from one priority-stack pass."""
    if not getattr(policy, "stack_algorithm", False):
        raise ValueError(f"policy {policy.name!r} is not a stack algorithm")
    caps = np.asarray(capacities, dtype=np.int64)
    depth = int(caps.max())
    inst = np.arange(stream.lengths.size) if subset is None else np.asarray(subset, dtype=np.int64)
    by_len = inst[np.argsort(-stream.lengths[inst], kind="stable")]
    lengths, starts = stream.lengths[by_len], stream.starts[by_len]
    n = lengths.size
    key = np.full((n, depth), EMPTY, dtype=np.int64)
    last_seq = np.full((n, depth), -1, dtype=np.int64)
    last_time = np.zeros((n, depth))
    next_seq = np.full((n, depth), NEVER, dtype=np.int64)
    kind = np.zeros((n, depth), dtype=np.int8)
    unused = np.full((n, depth), -1, dtype=np.int64)  # uses/loaded_seq depend on the size: not defined here
    hit_depth = np.zeros((n, depth + 1), dtype=np.int64)  # column `depth` counts misses at every size
    cols = np.arange(depth)
    rounds = int(lengths.max()) if n else 0
    neg_len = -lengths
    bar = progress(total=rounds, desc=f"{policy.name} stack", disable=not show_progress)
    for r in range(rounds):
        m = int(np.searchsorted(neg_len, -r, side="left"))
        a = starts[:m] + r
        x = stream.key[a]
        k_, ls, lt, ns, kd = key[:m], last_seq[:m], last_time[:m], next_seq[:m], kind[:m]
        eq = k_ == x[:, None]
        found = eq.any(axis=1)
        empty = k_ == EMPTY
        first_empty = np.where(empty.any(axis=1), empty.argmax(axis=1), depth)
        d = np.where(found, eq.argmax(axis=1), first_empty)
        hit_depth[np.arange(m), np.where(found, d, depth)] += 1
        view = CacheView(k_, kd, unused[:m], unused[:m], ls, lt, np.full(m, r, np.int64),
                         stream.time[a], ns if policy.needs_future else None)
        v = _single_key(policy.priority(view), depth)
        v = np.where(empty, np.iinfo(np.int64).max, v)  # empty levels are never the victim
        run_min = np.minimum.accumulate(v, axis=1)
        holder = np.maximum.accumulate(np.where(v == run_min, cols, 0), axis=1)  # where the prefix min sits
        src = np.broadcast_to(cols, (m, depth)).copy()
        prev_min, prev_holder = run_min[:, :-1], holder[:, :-1]
        inner = cols[1:] < d[:, None]
        stays = v[:, 1:] > prev_min  # the level's entry is worth more than the carried victim
        src[:, 1:] = np.where(inner, np.where(stays, cols[1:], prev_holder),
                              np.where(cols[1:] == d[:, None], prev_holder, cols[1:]))
        rows = np.arange(m)[:, None]
        for arr in (k_, ls, lt, ns, kd):
            arr[...] = arr[rows, src]
        k_[:, 0], ls[:, 0], lt[:, 0] = x, r, stream.time[a]
        ns[:, 0], kd[:, 0] = stream.next_seq[a], stream.kind[a]
        if r % 512 == 0:
            bar.update(min(512, rounds - r))
    bar.close()
    hits_below = np.cumsum(hit_depth[:, :depth], axis=1)  # hits at depth < K, for K = 1..depth
    misses = lengths[:, None] - hits_below[:, caps - 1]
    out = np.zeros((stream.lengths.size, caps.size), dtype=np.int64)
    out[by_len] = misses
    return out
