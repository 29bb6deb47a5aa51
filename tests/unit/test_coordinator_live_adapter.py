"""The live coordinator (deployments/coordinator.py) against the simulator's adapter: one event
sequence through both gives identical actions; and the live adapter's own duties (forgetting
silent replicas, rebuilding after a restart, operator pins, the view)."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.coordinator import CacheCoordinator
from policies.snapshot import DISK, GPU, HOST, REMOTE, PipelineKey
from trace_replay.simulator import SimConfig
from trace_replay.simulator.config import ClusterSpec, ComponentSpec, InferenceSpec, ReloadOverhead
from trace_replay.simulator.engine import Simulation
from trace_replay.simulator.policy_sets import build_runtime, get_policy_set
from trace_replay.simulator.workload import build_workload
from trace_replay.table import LORA, build_table

# small cadences so a two-minute scenario re-plans, prefetches and closes reward windows
# prefetch_held: held pipelines are offered too, so this short scenario credits used as well as
# wasted prefetches through both adapters
CORE = {"replan_requests": 6, "replan_max_s": 30.0, "prefetch_interval_s": 4.0, "reward_window_s": 40.0,
        "prefetch_held": True,
        "min_free_bytes": 0.0, "popularity_args": {"half_life_s": 30.0, "min_demand": 0.05, "hot_frac": 0.15,
                                                   "warm_frac": 0.5}}
TICK_S = 10.0
KINDS = {0: "controlnet", 1: "lora", 2: "base"}


def scenario(n: int = 1200, seed: int = 3):
    """A skewed mix of 5 bases, some with one of 4 LoRAs; one request every half second."""
    rng = np.random.default_rng(seed)
    bases = rng.choice(5, size=n, p=[0.45, 0.25, 0.15, 0.1, 0.05])
    has = rng.random(n) < 0.4
    offsets = np.concatenate([[0], np.cumsum(has)]).astype(np.int64)
    table = build_table(n, time=np.arange(n) * 0.5, base_model=bases.astype(np.int32),
                        base_models=[f"b{i}" for i in range(5)], adapter_offsets=offsets,
                        adapter_kind=np.full(int(has.sum()), LORA, np.int8),
                        adapter_id=rng.integers(0, 4, int(has.sum())).astype(np.int32),
                        lora_ids=[f"l{i}" for i in range(4)])
    cfg = SimConfig(cluster=ClusterSpec(gpus=3, gpu_model_gb=10.0, host_gb=12.0, disk_gb=0, load_model="bandwidth",
                                        remote_gbps=1.0, pcie_gbps=12.0),
                    components=ComponentSpec(base_gb=(4.0, 4.0), lora_gb=(0.2, 0.4),
                                             reload_overhead_s=ReloadOverhead(base_model=0.0, controlnet=0.0, lora=0.0)),
                    inference=InferenceSpec(ref_runtime_s=2.0, ref_steps=30, default_steps=30, jitter_cv=0.0), seed=seed)
    return table, cfg, rng


def name(k: int) -> str:
    return f"k{k}"


class Harness:
    """Drives the simulator's adapter with events and sends the live adapter what replicas
    would report about the same events, one report per event."""

    def __init__(self, table, cfg, prefetch: str = "ucb1"):
        core = {**CORE, "prefetch": prefetch}
        spec = get_policy_set("coordinator").model_copy(update={"placement_args": core})
        wl, _ = build_workload(table, cfg)
        self.sim = sim = Simulation(wl, cfg, build_runtime(spec, cfg))
        sim.rt.attach(sim)
        self.co = sim.rt.placement
        self.wl = wl
        self.now = 0.0
        raw = {"models": [{"id": name(k), "kind": KINDS[int(wl.key_kind[k])], "size_bytes": int(wl.key_size[k]),
                           "path": name(k)}
                          for k in range(wl.n_keys)],
               "control": {"replan_period_s": TICK_S, "report_period_s": 60.0}}
        self.live = CacheCoordinator(raw, clock=lambda: self.now, seed=cfg.seed + 1, core_args=core)
        self.costs = {name(k): sim.tier_cost[k].tolist() for k in range(wl.n_keys)}
        self.evicted = [[] for _ in sim.workers]  # since each replica's last report
        self.loads = [[] for _ in sim.workers]
        self.sim_loaded = None
        evict, bring = sim.evict, sim.bring

        # as a replica's cache reports prefetch_hits: models a prefetch brought onto the GPU that
        # a request then used while still there (first use)
        self.prefetched = [set() for _ in sim.workers]

        def on_evict(w, key, now):
            self.evicted[w.idx].append({"id": name(key), "to": REMOTE})
            self.prefetched[w.idx].discard(key)
            evict(w, key, now)

        def on_bring(w, key, now, protect, uses=1, spare=()):
            t = bring(w, key, now, protect, uses, spare)
            self.loads[w.idx].append({"id": name(key), "from": REMOTE, "seconds": t, "prefetch": uses == 0})
            if uses == 0 and key in w.slot_of:
                self.prefetched[w.idx].add(key)
            return t

        sim.evict, sim.bring = on_evict, on_bring
        start_prefetch = sim.start_prefetch

        def on_prefetch(w, keys, now):
            self.sim_loaded = [name(k) for k in keys if k not in w.slot_of]
            return start_prefetch(w, keys, now)

        sim.start_prefetch = on_prefetch
        self.route = self.co.wrap_route(lambda i, comps, now: self.target)

    def tiers(self, w) -> dict:
        out = {}
        for k in range(self.wl.n_keys):
            if k in w.slot_of:
                out[name(k)] = GPU
            elif w.host is not None and k in w.host.items:
                out[name(k)] = HOST
            elif w.disk is not None and k in w.disk.items:
                out[name(k)] = DISK
        return out

    def report(self, r: int, idle: bool = False, served=(), hits=()) -> dict:
        w = self.sim.workers[r]
        rep = {"t": self.now, "tiers": self.tiers(w), "queue_len": 0 if idle else 1, "loading": [],
               "gpu_free_bytes": int(w.free_bytes), "host_free_bytes": int(w.host.free),
               "gpu_budget_bytes": int(w.cap_bytes), "host_budget_bytes": int(w.host.cap),
               "load_cost_s": self.costs, "served": list(served), "loads": self.loads[r],
               "evicted": self.evicted[r], "prefetch_hits": list(hits)}
        self.loads[r], self.evicted[r] = [], []
        return self.live.report(f"replica-{r}", rep)

    # -- events --------------------------------------------------------------------------------
    def request(self, i: int, r: int, t: float) -> None:
        self.now = t
        wl, w = self.wl, self.sim.workers[r]
        comps = wl.comp_key[wl.comp_offsets[i]:wl.comp_offsets[i + 1]].tolist()
        hits = [name(k) for k in comps if k in self.prefetched[r] and k in w.slot_of]
        self.prefetched[r] -= set(comps)
        self.target = w
        self.route(i, comps, t)
        self.sim.start(w, i, comps, t)  # its loads and evictions
        w.busy = False
        served = {"base": name(comps[0]), "controlnets": [], "loras": [name(k) for k in comps[1:]], "t": t}
        self.report(r, served=[served], hits=hits)

    def idle(self, r: int, t: float):
        """Both adapters see replica r idle; returns (what the simulator loaded, the live action)."""
        self.now = t
        w = self.sim.workers[r]
        action = self.report(r, idle=True)  # what the replica holds before it acts
        self.sim_loaded = []
        self.co.on_idle(w, t)
        w.busy = False
        self.report(r)  # the load it began, as the next report says
        return sorted(self.sim_loaded), sorted(action["prefetch"] + action["place"])

    def tick(self, t: float):
        self.now = t
        for w in self.sim.workers:
            w.busy = True  # nobody idle: pins load on idle events, in both
        self.co.on_tick(t)
        for w in self.sim.workers:
            w.busy = False
        for r in range(len(self.sim.workers)):
            self.report(r)  # the first one re-plans (on the replan_period_s grid); all stay alive
        sim_pins = [sorted(name(k) for k in w.pinned) for w in self.sim.workers]
        view = {x["index"]: x for x in self.live.view()["replicas"]}
        live_pins = [view[r]["pins"] for r in range(len(self.sim.workers))]
        return sim_pins, live_pins, self.co.router.pool.tolist(), self.live.st.pool.tolist()


@pytest.mark.parametrize("prefetch", ["ucb1", "thompson"])  # thompson draws: same seed, same draws
def test_one_event_sequence_through_both_adapters_gives_identical_actions(prefetch):
    table, cfg, rng = scenario()
    h = Harness(table, cfg, prefetch)
    n_pins = n_prefetch = 0
    h.tick(0.0)
    t = 0.0
    for i in range(len(h.wl)):
        t = i * 0.5
        if t > 0 and t % TICK_S == 0:
            sim_pins, live_pins, sim_pool, live_pool = h.tick(t)
            assert sim_pins == live_pins and sim_pool == live_pool, f"plan at t={t}"
            n_pins += sum(map(len, sim_pins))
        h.request(i, int(rng.integers(3)), t)
        if i % 2 == 1:
            sim_loaded, live_prefetch = h.idle(int(rng.integers(3)), t + 0.25)
            assert sim_loaded == live_prefetch, f"idle at t={t + 0.25}"
            n_prefetch += bool(live_prefetch)
    # the scenario exercised what it compares: pins, pin loads and bandit prefetches, credited
    assert n_pins > 0 and n_prefetch >= 3
    assert h.co.st.used > 0 and h.co.st.wasted > 0
    assert (h.co.st.used, h.co.st.wasted) == (h.live.st.used, h.live.st.wasted)
    n = h.live.st.stats.pulls.size  # the bandit learnt the same rewards (paid seconds included)
    assert n > 0
    np.testing.assert_array_equal(h.co.st.stats.pulls[:n], h.live.st.stats.pulls)
    np.testing.assert_array_equal(h.co.st.stats.reward_sum[:n], h.live.st.stats.reward_sum)
    np.testing.assert_array_equal(h.co.st.tier, h.live.st.tier[:, : h.co.st.tier.shape[1]])


# -- the live adapter on its own ------------------------------------------------------------------
def config(**control) -> dict:
    return {"models": [{"id": "sd-a", "kind": "base", "size_bytes": 4 << 30, "path": "a"},
                       {"id": "sd-b", "kind": "base", "size_bytes": 4 << 30, "path": "b"},
                       {"id": "cn", "kind": "controlnet", "size_bytes": 1 << 30, "path": "c"},
                       {"id": "ink", "kind": "lora", "size_bytes": 1 << 26, "path": "i"}],
            "control": {"report_period_s": 1.0, "replan_period_s": 5.0, **control}}


def rep(tiers=None, served=(), queue_len=1, free=8 << 30, **extra) -> dict:
    return {"t": 0.0, "tiers": tiers or {}, "queue_len": queue_len, "loading": [], "gpu_free_bytes": free,
            "host_free_bytes": 0, "gpu_budget_bytes": 16 << 30, "host_budget_bytes": 0,
            "load_cost_s": {"sd-a": [0, 0.5, 1, 8], "sd-b": [0, 0.5, 1, 8], "cn": [0, 0.1, 0.3, 2],
                            "ink": [0, 0.01, 0.05, 0.5]},
            "served": list(served), "loads": [], "evicted": [], "prefetch_hits": [], **extra}


def req(base, t, loras=()) -> dict:
    return {"base": base, "controlnets": [], "loras": list(loras), "t": t}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_hot_pipeline_is_pinned_on_the_reporting_replicas_and_the_view_shows_it():
    clock = Clock()
    c = CacheCoordinator(config(), clock=clock, core_args={"replan_requests": 4})
    for step in range(6):
        clock.t = float(step)
        for r in ("r0", "r1", "r2"):
            c.report(r, rep({"sd-a": GPU} if r == "r0" else {}, [req("sd-a", clock.t)] * 3 + [req("sd-b", clock.t, ["ink"])]))
    acts = {r: c.report(r, rep({"sd-a": GPU} if r == "r0" else {})) for r in ("r0", "r1", "r2")}
    holders = [r for r, a in acts.items() if "sd-a" in a["pins"]]
    assert len(holders) >= 2 and "r0" in holders  # min_replicas copies, the one holding it first
    v = c.view()
    assert v["bands"]["hot"][0]["pipeline"] == "sd-a" and v["plans"] >= 1
    r0 = next(x for x in v["replicas"] if x["id"] == "r0")
    assert r0["tiers"]["gpu"] == ["sd-a"] and "sd-a" in r0["pins"]


def test_a_silent_replica_is_forgotten_after_three_report_periods():
    clock = Clock()
    c = CacheCoordinator(config(), clock=clock)
    c.report("r0", rep({"sd-a": GPU}))
    c.report("r1", rep({"sd-b": GPU}))
    clock.t = 2.9
    c.report("r1", rep({"sd-b": GPU}))
    assert {x["id"] for x in c.view()["replicas"]} == {"r0", "r1"}
    clock.t = 3.5  # r0 last reported 3.5 s (3.5 periods) ago
    c.report("r1", rep({"sd-b": GPU}))
    assert {x["id"] for x in c.view()["replicas"]} == {"r1"}
    r0 = c.rep_index.get("r0")
    assert r0 is None and (c.st.tier[0] == REMOTE).all()  # its row holds nothing any more
    c.report("r2", rep({"cn": HOST}))  # a new replica takes the freed index
    assert c.rep_index["r2"] == 0 and c.st.tier[0, c.comp_id["cn"]] == HOST
    clock.t = 10.0  # nobody reports any more: the view forgets them too
    assert c.view()["replicas"] == []


def test_a_restarted_coordinator_rebuilds_its_view_from_the_next_reports():
    clock = Clock()
    reports = {"r0": rep({"sd-a": GPU, "ink": HOST}), "r1": rep({"sd-b": GPU, "cn": GPU})}
    first = CacheCoordinator(config(), clock=clock)
    for r, x in reports.items():
        first.report(r, x)
    again = CacheCoordinator(config(), clock=clock)  # state lost
    for r, x in reports.items():
        again.report(r, x)
    strip = lambda v: [{k: x[k] for k in ("id", "tiers", "pool")} for x in v["replicas"]]  # noqa: E731
    assert strip(first.view()) == strip(again.view())


def test_operator_pins_persist_until_unpinned_and_pick_a_holder_by_default():
    clock = Clock()
    c = CacheCoordinator(config(), clock=clock)
    c.report("r0", rep({}))
    c.report("r1", rep({"sd-b": GPU}))
    assert c.pin(["sd-b"]) == {"pinned": {"sd-b": ["r1"]}}  # the replica already holding it
    c.pin(["cn"], replicas=["r0", "r1"])
    assert "sd-b" in c.report("r1", rep({"sd-b": GPU}))["pins"]
    assert c.report("r0", rep())["pins"] == ["cn"]
    clock.t = 30.0  # many re-plans later
    c.report("r0", rep())
    assert "sd-b" in c.report("r1", rep({"sd-b": GPU}))["pins"]
    assert c.unpin(["sd-b", "sd-a"]) == {"unpinned": ["sd-b"]}
    assert "sd-b" not in c.report("r1", rep({"sd-b": GPU}))["pins"]
    with pytest.raises(ValueError):
        c.pin(["nope"])


def test_an_idle_replica_gets_a_prefetch_of_a_warm_pipeline_and_a_busy_one_does_not():
    clock = Clock()
    # prefetch_held: the warm pipeline here (sd-a+ink) has its base on r0, which the default
    # never prefetches a second copy of
    c = CacheCoordinator(config(), clock=clock, core_args={"replan_requests": 4, "min_free_bytes": 0,
                                                           "prefetch_held": True,
                                                           "popularity_args": {"half_life_s": 600.0, "hot_frac": 0.34,
                                                                               "warm_frac": 0.66}})
    served = [req("sd-a", 0.0)] * 20 + [req("sd-b", 0.0, ["ink"])] * 10 + [req("sd-a", 0.0, ["ink"])]
    assert c.report("r0", rep({"sd-a": GPU}, served))["prefetch"] == []  # busy
    clock.t = 1.0
    acts = c.report("r1", rep({}, queue_len=0, free=12 << 30))
    assert acts["prefetch"] or acts["place"]  # idle with room: pins it lacks first, or a warm pipeline
    clock.t = 2.0
    assert c.report("r0", rep({"sd-a": GPU}, queue_len=3))["prefetch"] == []
    # after a re-plan pins r1 too, the pins it lacks come as placements, not as a bandit prefetch
    clock.t = 5.0
    acts = c.report("r1", rep({"sd-a": GPU}, queue_len=0, free=12 << 30))
    assert acts["place"] and set(acts["place"]) <= set(acts["pins"]) - {"sd-a"} and acts["prefetch"] == []


def test_actions_and_view_are_plain_json():
    # they cross a Ray actor call and the /v1/cache response: no numpy scalars, no sets
    import json

    clock = Clock()
    c = CacheCoordinator(config(), clock=clock, core_args={"replan_requests": 2, "min_free_bytes": 0})
    acts = c.report("r0", rep({"sd-a": GPU, "ink": HOST}, [req("sd-a", 0.0), req("sd-b", 0.0, ["ink"])] * 3,
                              queue_len=0, free=12 << 30))
    c.pin(["cn"])
    assert json.loads(json.dumps(acts)) == acts
    view = c.view()
    assert json.loads(json.dumps(view)) == view
    assert view["replicas"][0]["tiers"] == {"gpu": ["sd-a"], "host": ["ink"], "disk": []}


@pytest.mark.parametrize("replica_used_it", [True, False])
def test_a_served_request_and_an_eviction_in_one_report_are_ordered_by_the_replicas_prefetch_hits(
        replica_used_it):
    # pipeline sd-b+ink was prefetched onto r0 (its LoRA loaded by the prefetch). One report
    # carries a request for it and the LoRA's eviction: if the replica says the request used the
    # prefetched LoRA, the request came first (a hit); if not, the eviction did (wasted).
    clock = Clock()
    c = CacheCoordinator(config(), clock=clock)
    c.report("r0", rep({"sd-b": GPU, "ink": GPU}, [req("sd-b", 0.0, ["ink"])]))
    p = c.pipes.get(PipelineKey.of(c.comp_id["sd-b"], (), (c.comp_id["ink"],)))
    comps = frozenset({c.comp_id["sd-b"], c.comp_id["ink"]})
    c.st.open[0][p] = [0.0, 2.0, 0, 5.0, 0.9, comps, 1]  # an open prefetch record (core layout)
    clock.t = 1.0
    c.report("r0", rep({"sd-b": GPU, "ink": HOST}, [req("sd-b", 0.5, ["ink"])],
                       evicted=[{"id": "ink", "to": HOST}], prefetch_hits=["ink"] if replica_used_it else []))
    c.core._credit(c.st, 1e9)  # close every window
    assert (c.st.used, c.st.wasted) == ((1, 0) if replica_used_it else (0, 1))


def test_the_view_sums_the_load_seconds_replicas_spent_on_prefetches():
    # prefetch loads are on no request's path: the view counts them, so a benchmark can add them
    # to the load-seconds it reads from responses
    c = CacheCoordinator(config(), clock=Clock())
    c.report("r0", rep({"sd-a": GPU}, loads=[{"id": "sd-a", "from": 2, "seconds": 0.75, "prefetch": False}]))
    c.report("r1", rep({"sd-b": GPU}, loads=[{"id": "sd-b", "from": 2, "seconds": 0.5, "prefetch": True},
                                             {"id": "ink", "from": 1, "seconds": 0.25, "prefetch": True}]))
    assert c.view()["prefetch"]["load_seconds"] == 0.75
    # a pinned model placed while idle is an idle load too, but not a prefetch
    c.report("r2", rep({"sd-a": GPU}, loads=[{"id": "sd-a", "from": 2, "seconds": 0.5, "prefetch": False,
                                             "placement": True}]))
    assert c.view()["prefetch"]["load_seconds"] == 0.75 and c.view()["placement"]["load_seconds"] == 0.5
