"""GDSF, ARC, S3-FIFO and SIEVE as stateful eviction policies, and the ShadowCache that drives
them: hand-worked sequences from the papers' rules, ARC and SIEVE against textbook references,
the bounds every online policy obeys (Belady's MIN, compulsory misses), and the pinned and
out-of-order paths."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import numpy as np
import pytest

from policies.eviction import EVICTION
from policies.shadow import ShadowCache
from policies.snapshot import BASE, LORA
from tests.stateful_fixtures import FIFO

CLASSIC = ("gdsf", "arc", "s3-fifo", "sieve")


def victims(shadow: ShadowCache, seq: list[Hashable]) -> list[Hashable]:
    """Access ``seq`` in order; the keys evicted, in eviction order."""
    out: list[Hashable] = []
    for key in seq:
        before = shadow.keys()
        shadow.access(key)
        out += [k for k in before if k not in shadow]
    return out


def zipf_sequence(seed: int, n: int = 3000, keys: int = 60) -> list[int]:
    rng = np.random.default_rng(seed)
    return (rng.zipf(1.4, n) % keys).tolist()


def belady_misses(seq: list[Hashable], capacity: int) -> int:
    """Belady's MIN for unit sizes: on a miss in a full cache, evict the key used farthest ahead."""
    next_use = [0] * len(seq)
    last: dict[Hashable, int] = {}
    for i in range(len(seq) - 1, -1, -1):
        next_use[i] = last.get(seq[i], len(seq))
        last[seq[i]] = i
    cache: dict[Hashable, int] = {}  # key -> index of its next use
    misses = 0
    for i, key in enumerate(seq):
        if key not in cache:
            misses += 1
            if len(cache) >= capacity:
                del cache[max(cache, key=cache.__getitem__)]
        cache[key] = next_use[i]
    return misses


class PaperARC:
    """ARC(c) exactly as Megiddo & Modha's Figure 4 writes it (unit pages), for comparison."""

    def __init__(self, c: int) -> None:
        self.c, self.p = c, 0.0
        self.t1, self.t2, self.b1, self.b2 = OrderedDict(), OrderedDict(), OrderedDict(), OrderedDict()

    def _replace(self, x: Hashable) -> None:
        if self.t1 and ((x in self.b2 and len(self.t1) == self.p) or len(self.t1) > self.p):
            self.b1[self.t1.popitem(last=False)[0]] = None
        else:
            self.b2[self.t2.popitem(last=False)[0]] = None

    def access(self, x: Hashable) -> bool:
        t1, t2, b1, b2, c = self.t1, self.t2, self.b1, self.b2, self.c
        if x in t1 or x in t2:  # case I
            t1.pop(x, None)
            t2.pop(x, None)
            t2[x] = None
            return True
        if x in b1:  # case II
            self.p = min(self.p + max(1.0, len(b2) / len(b1)), c)
            self._replace(x)
            del b1[x]
            t2[x] = None
            return False
        if x in b2:  # case III
            self.p = max(self.p - max(1.0, len(b1) / len(b2)), 0.0)
            self._replace(x)
            del b2[x]
            t2[x] = None
            return False
        if len(t1) + len(b1) == c:  # case IV-A
            if len(t1) < c:
                b1.popitem(last=False)
                self._replace(x)
            else:
                t1.popitem(last=False)
        elif len(t1) + len(t2) + len(b1) + len(b2) >= c:  # case IV-B
            if len(t1) + len(t2) + len(b1) + len(b2) == 2 * c:
                b2.popitem(last=False)
            self._replace(x)
        t1[x] = None
        return False


def reference_sieve_misses(seq: list[Hashable], capacity: int) -> int:
    """SIEVE on a Python list, tail (oldest) at index 0, hand an index."""
    queue: list[Hashable] = []
    visited: dict[Hashable, bool] = {}
    hand, misses = 0, 0
    for key in seq:
        if key in visited:
            visited[key] = True
            continue
        misses += 1
        if len(queue) >= capacity:
            while visited[queue[hand]]:
                visited[queue[hand]] = False
                hand = (hand + 1) % len(queue)
            del visited[queue.pop(hand)]
            hand = hand % len(queue) if queue else 0  # the next newer entry slid into this index
        queue.append(key)
        visited[key] = False
    return misses


# ---------------------------------------------------------------- all four: bounds and protocol


@pytest.mark.parametrize("name", CLASSIC)
@pytest.mark.parametrize("capacity", [1, 3, 8, 20])
def test_misses_bounded_by_min_and_compulsory(name, capacity):
    """No online policy beats Belady's MIN, and every distinct key misses once; a cache that holds
    every key misses exactly once per key."""
    seq = zipf_sequence(capacity)
    shadow = ShadowCache(EVICTION.create(name), capacity)
    for key in seq:
        shadow.access(key)
        assert len(shadow) <= capacity
    assert shadow.hits + shadow.misses == len(seq)
    assert shadow.misses >= belady_misses(seq, capacity) >= len(set(seq))
    roomy = ShadowCache(EVICTION.create(name), len(set(seq)))
    for key in seq:
        roomy.access(key)
    assert roomy.misses == len(set(seq))


@pytest.mark.parametrize("name", CLASSIC)
def test_sizes_respect_capacity_and_oversize_is_not_admitted(name):
    rng = np.random.default_rng(5)
    shadow = ShadowCache(EVICTION.create(name), 10.0)
    for key in (rng.zipf(1.3, 2000) % 40).tolist():
        size = 0.5 + (key % 7)  # a key keeps its size
        if rng.random() < 0.1:
            shadow.prefetch(key, size=size, cost=1.0 + key % 3)
        else:
            shadow.access(key, size=size, cost=1.0 + key % 3)
        assert shadow.used <= 10.0 + 1e-9
        assert abs(shadow.used - sum(0.5 + (k % 7) for k in shadow.keys())) < 1e-6
    before = shadow.keys()
    assert shadow.access("huge", size=11.0) is False
    assert "huge" not in shadow and shadow.keys() == before  # nothing evicted for it


@pytest.mark.parametrize("name", CLASSIC)
def test_unknown_keys_are_handled_as_new(name):
    memory = EVICTION.create(name).new_memory(4)
    memory.on_evict("never-seen", 0.0)  # nothing to forget
    memory.on_insert("a", LORA, 1.0, None, 0.0)
    memory.on_hit("b", 0.0)  # a hit the memory never saw inserted: now a resident entry
    assert sorted(memory.victim_order(["a", "b"])) == ["a", "b"]
    assert memory.victim_order(["x", "a", "y"])[:2] == ["x", "y"]  # no history: proposed first
    memory.on_evict("b", 0.0)
    assert memory.victim_order(["a"]) == ["a"]


@pytest.mark.parametrize("name", CLASSIC)
def test_pinned_and_out_of_order_evictions_keep_memory_and_cache_in_step(name):
    """Fuzz: the cache evicts the first unpinned key of victim_order, or drops a random resident
    key; the memory's residents stay the cache's and every victim_order is a permutation."""
    rng = np.random.default_rng(3)
    shadow = ShadowCache(EVICTION.create(name), 8.0)
    memory = shadow.memory
    for step, key in enumerate((rng.zipf(1.3, 3000) % 50).tolist()):
        size = 0.5 + (key % 4) * 0.75
        shadow.access(key, size=size)
        resident = shadow.keys()
        if step % 7 == 0 and len(resident) > 2:  # evict around a random pinned set
            unpinned = [k for k in resident if rng.random() < 0.6]
            order = memory.victim_order(unpinned)
            assert sorted(order) == sorted(unpinned)
            if order:
                assert shadow.discard(order[0], float(step))
        elif step % 11 == 0 and resident:  # the store drops any key
            k = resident[int(rng.integers(len(resident)))]
            assert shadow.discard(k, float(step))
        assert {k for k in range(50) if k in memory} == set(shadow.keys())
        assert sorted(memory.victim_order(shadow.keys())) == sorted(shadow.keys())


def test_shadow_cache_follows_the_event_protocol():
    """The protocol-checking FIFO fixture raises on any event out of the documented order."""
    policy = EVICTION.create(FIFO)
    shadow = ShadowCache(policy, 5.0)
    rng = np.random.default_rng(0)
    for key in (rng.zipf(1.3, 500) % 30).tolist():
        if rng.random() < 0.2:
            shadow.prefetch(key, size=1.0 + key % 3)
        else:
            shadow.access(key, size=1.0 + key % 3)
    shadow.access("too-big", size=6.0)
    assert shadow.memory.evictions == shadow.memory.inserts - len(shadow)


# ---------------------------------------------------------------------------------------- GDSF


def test_gdsf_keeps_higher_cost_per_size_and_inflates():
    shadow = ShadowCache(EVICTION.create("gdsf"), 6.0)
    shadow.access("a", size=5.0, cost=10.0)  # H = 0 + 1 x 10/5 = 2
    shadow.access("b", size=1.0, cost=3.0)  # H = 3
    # "c" needs room: the lowest H, "a", goes although it cost more; L becomes 2
    assert victims(shadow, ["c"]) == ["a"]
    assert shadow.memory.inflation == 2.0
    assert shadow.memory.priority_of("c") == 2.0 + 4.6  # a LoRA's default load time, size 1


def test_gdsf_frequency_and_kind_default_cost_and_recency_tie():
    shadow = ShadowCache(EVICTION.create("gdsf"), 2.0)
    shadow.access("lora", kind=LORA)  # H = 4.6
    shadow.access("base", kind=BASE)  # H = 22.6
    assert victims(shadow, ["x"]) == ["lora"]  # equal F and size: the cheaper load goes
    assert shadow.memory.inflation == 4.6
    shadow.access("x")  # hit: F = 2, H = 4.6 + 2 x 4.6 = 13.8
    assert shadow.memory.priority_of("x") == pytest.approx(13.8)
    assert victims(shadow, ["y"]) == ["x"]  # 13.8 < 22.6: frequency does not save it here
    memory = EVICTION.create("gdsf").new_memory(2)
    memory.on_insert("old", LORA, 1.0, 1.0, 0.0)
    memory.on_insert("new", LORA, 1.0, 1.0, 0.0)
    assert memory.victim_order(["new", "old"]) == ["old", "new"]  # equal H: least recently used
    memory.on_hit("old", 1.0)  # H = 2 now
    memory.on_hit("new", 2.0)
    assert memory.victim_order(["new", "old"]) == ["old", "new"]  # equal again: "new" is more recent


# ----------------------------------------------------------------------------------------- ARC


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arc_with_unit_sizes_is_the_papers_arc(capacity, seed):
    """Same hits, same T1/T2/B1/B2 (contents and order) and same p after every request."""
    rng = np.random.default_rng(seed)
    seq = (rng.zipf(1.2, 1500) % (4 * capacity + 3)).tolist()
    ref, shadow = PaperARC(capacity), ShadowCache(EVICTION.create("arc"), capacity)
    mem = shadow.memory
    for key in seq:
        assert shadow.access(key) == ref.access(key)
        assert (list(mem.t1), list(mem.t2), list(mem.b1), list(mem.b2)) == \
               (list(ref.t1), list(ref.t2), list(ref.b1), list(ref.b2))
        assert mem.p == ref.p


def test_arc_hand_worked_adaptation():
    # c = 2. a, b -> T1 = [a, b]; a hit -> T2 = [a], T1 = [b]
    # c: case IV-B, REPLACE: |T1| = 1 > p = 0 -> b to B1
    # b: in B1, p = 0 + max(1, |B2|/|B1| = 0) = 1; REPLACE: |T1| = 1 is not > 1 -> a (T2) to B2
    # a: in B2, p = 1 - max(1, |B1|/|B2| = 0) = 0; REPLACE: |T1| = 1 > 0 -> c to B1
    shadow = ShadowCache(EVICTION.create("arc"), 2)
    mem = shadow.memory
    assert victims(shadow, list("abac")) == ["b"] and mem.p == 0
    assert victims(shadow, ["b"]) == ["a"] and mem.p == 1 and list(mem.t2) == ["b"]
    assert victims(shadow, ["a"]) == ["c"] and mem.p == 0 and list(mem.t2) == ["b", "a"]


def test_arc_scan_does_not_flush_keys_seen_twice():
    shadow = ShadowCache(EVICTION.create("arc"), 10)
    for key in list(range(5)) * 2:  # five hot keys, each seen twice: T2
        shadow.access(key)
    for key in range(100, 200):  # a one-pass scan of new keys
        shadow.access(key)
    assert all(k in shadow for k in range(5))
    assert shadow.memory.p == 0  # no ghost hit, no adaptation


def test_arc_prefetch_enters_t1_without_adapting():
    shadow = ShadowCache(EVICTION.create("arc"), 2)
    victims(shadow, list("abac"))  # b is in B1 now
    p = shadow.memory.p
    shadow.prefetch("b")
    assert "b" in shadow.memory.t1 and shadow.memory.p == p


# ------------------------------------------------------------------------------------- S3-FIFO


def test_s3fifo_one_hit_wonder_leaves_small_before_a_reaccessed_entry():
    # capacity 10: S's share 1, M's 9. 0..9 all enter S; 0 is hit twice (freq 2 > 1), 1 once
    # (freq 1: not above the paper's threshold). On the miss of 10, S's tail 0 moves to M and 1,
    # then the one-hit wonders 2, 3, ..., leave to the ghost queue.
    shadow = ShadowCache(EVICTION.create("s3-fifo"), 10)
    for key in [*range(10), 0, 0, 1]:
        shadow.access(key)
    assert victims(shadow, [10, 11]) == [1, 2]
    assert shadow.memory.queue_of(0) == "M" and shadow.memory.queue_of(1) == "G"


def test_s3fifo_hand_worked_ghost_and_main():
    # capacity 3: S's share 0.3 (S evicts whenever it holds anything), M's share and G 2.7.
    # a b c -> S = [a b c]; a a -> freq(a) = 2
    # d: S's tail a (freq 2) to M; b (freq 0) evicted to G = [b]; S = [c d]
    # b: ghost. c evicted to G = [b c]; b enters M = [a b]; S = [d]
    # e: d evicted, G = [c d]; S = [e]   f: e evicted, G = [c d e] -> over 2.7, drop c
    # e: ghost. f evicted; e enters M = [a b e]; S empty
    # g: S empty -> M: a (freq 2) reinserted with freq 1, M = [b e a]; b (freq 0) evicted
    shadow = ShadowCache(EVICTION.create("s3-fifo"), 3)
    mem = shadow.memory
    assert victims(shadow, list("abcaad")) == ["b"]
    assert victims(shadow, ["b"]) == ["c"] and mem.queue_of("b") == "M"  # a ghost hit goes to M
    assert victims(shadow, list("efeg")) == ["d", "e", "f", "b"]
    assert mem.queue_of("a") == "M" and mem.queue_of("c") is None and mem.queue_of("b") is None
    assert list(mem.ghost) == ["f"]  # M's victims are not remembered; e left G when it came back


def test_s3fifo_out_of_order_eviction_keeps_the_skipped_entry_first():
    memory = EVICTION.create("s3-fifo").new_memory(10)
    for key in range(10):
        memory.on_insert(key, LORA, 1.0, None, 0.0)
    for _ in range(2):
        memory.on_hit(0, 0.0)
    assert memory.victim_order(list(range(10)))[:2] == [1, 2]
    memory.on_evict(2, 0.0)  # 1 pinned: the cache took the next one
    assert memory.queue_of(1) == "S" and memory.queue_of(2) == "G" and memory.queue_of(0) == "M"
    assert memory.victim_order([k for k in range(10) if k != 2])[0] == 1


# --------------------------------------------------------------------------------------- SIEVE


def test_sieve_visited_entry_survives_one_hand_pass():
    # capacity 3: a b c, hit a. d: the hand starts at the tail, a is visited (cleared, kept),
    # b is evicted, the hand rests on c. e: c evicted. f: hand on d, evicted. a survived it all.
    shadow = ShadowCache(EVICTION.create("sieve"), 3)
    assert victims(shadow, list("abcad")) == ["b"]
    assert shadow.memory.hand == "c" and shadow.memory.visited["a"] is False
    assert victims(shadow, list("ef")) == ["c", "d"] and "a" in shadow


@pytest.mark.parametrize("capacity", [1, 2, 5, 12])
def test_sieve_matches_a_reference(capacity):
    seq = zipf_sequence(capacity, n=2000, keys=40)
    shadow = ShadowCache(EVICTION.create("sieve"), capacity)
    for key in seq:
        shadow.access(key)
    assert shadow.misses == reference_sieve_misses(seq, capacity)


def test_sieve_victim_order_and_pinned_skip():
    memory = EVICTION.create("sieve").new_memory(3)
    for key in "abc":
        memory.on_insert(key, LORA, 1.0, None, 0.0)
    memory.on_hit("a", 0.0)
    # the hand would clear a, take b, take c, and then a on the next lap
    assert memory.victim_order(list("abc")) == list("bca")
    assert memory.victim_order(list("ca")) == list("ca")  # b pinned
    memory.on_evict("c", 0.0)  # out of order: the hand cleared a and passed over b
    assert memory.visited == {"a": False, "b": False} and memory.hand is None
    assert memory.victim_order(list("ab")) == list("ab")  # from the tail again
