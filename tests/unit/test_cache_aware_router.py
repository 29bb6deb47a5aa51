"""CacheAwareRouter without a cluster, in the style of Ray's own router tests
(python/ray/serve/tests/unit/test_pow_2_request_router.py): fake running replicas that publish
routing stats and answer queue-length probes, a mock clock, and Ray's own routing loop
(``_choose_replica_for_request``) driving ``choose_replicas``.

Load costs used throughout, seconds to the GPU from [gpu, host, disk, remote]: model ``m``
[0, 0.5, 2, 10], LoRA ``l`` [0, 0.1, 0.3, 1]; one request's compute is ``busy_s / queue_len`` or
1 s (the router's default) when a replica is idle.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
from ray.serve._private.test_utils import MockTimer
from ray.serve._private.utils import generate_request_id
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, RunningReplica

from deployments.config import ServeConfig
from deployments.routing import CacheAwareRouter, find_spec, router_config
from deployments.spec import GenerationSpec
from policies.snapshot import GPU, HOST, HOT, SHARED

NOW = 1000.0
MAX_ONGOING = 5
COSTS = {"m": [0.0, 0.5, 2.0, 10.0], "y": [0.0, 0.5, 2.0, 10.0], "l": [0.0, 0.1, 0.3, 1.0]}


class FakeRunningReplica(RunningReplica):
    """A replica as the router sees it: id, routing stats, and a queue length it answers with."""

    def __init__(self, unique_id: str, stats: dict | None = None, queue_len: int = 0, node: str = ""):
        self._replica_id = ReplicaID(unique_id=unique_id, deployment_id=DeploymentID(name="BaseModel"))
        self.stats = stats or {}
        self.queue_len = queue_len
        self.node = node

    @property
    def replica_id(self) -> ReplicaID:
        return self._replica_id

    @property
    def routing_stats(self) -> dict:
        return self.stats

    @property
    def max_ongoing_requests(self) -> int:
        return MAX_ONGOING

    @property
    def node_id(self) -> str:
        return self.node

    @property
    def availability_zone(self):
        return None

    @property
    def multiplexed_model_ids(self) -> set:
        return set()

    def push_proxy_handle(self, handle) -> None:
        pass

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return self.queue_len

    def __repr__(self) -> str:
        return self._replica_id.unique_id


def stats(t=NOW, tiers=None, busy_s=0.0, queue_len=0, pool=SHARED, loading=()) -> dict:
    """S1 routing stats, as BaseModel.record_routing_stats() publishes them."""
    return {"t": t, "queue_len": queue_len, "busy_s": busy_s, "tiers": dict(tiers or {}),
            "loading": list(loading), "gpu_free_bytes": 1 << 30, "host_free_bytes": 1 << 30,
            "load_cost_s": COSTS, "pool": pool}


def spec(base="m", loras=()) -> GenerationSpec:
    return GenerationSpec(prompt="p", base_model=base, width=64, height=64, steps=1,
                          guidance_scale=0.0, seed=0, loras=tuple((x, 1.0) for x in loras))


def pending(*args, internal_id: str | None = None, **kwargs) -> PendingRequest:
    return PendingRequest(args=list(args), kwargs=kwargs, metadata=RequestMetadata(
        request_id=generate_request_id(), internal_request_id=internal_id or generate_request_id(),
        call_method="generate"))


class Harness:
    """A router on the running loop with a mock clock, plus helpers to route through Ray's loop."""

    def __init__(self, replicas, **state):
        self.timer = MockTimer(NOW)
        self.router = CacheAwareRouter(
            deployment_id=DeploymentID(name="BaseModel"), handle_source=DeploymentHandleSource.REPLICA,
            self_actor_id="fake-ingress", use_replica_queue_len_cache=True, get_curr_time_s=self.timer.time)
        self.router.initialize_state(**{"stale_after_s": 4.0, "seed": 0, **state})
        self.router.initial_backoff_s = self.router.max_backoff_s = 0.001
        self.replicas = list(replicas)
        self.router.update_replicas(self.replicas)

    async def probe(self) -> None:
        """Fill Ray's queue-length cache from the fakes (as Ray's background probe does)."""
        await self.router._probe_queue_lens(self.replicas, 0)

    async def route(self, pr: PendingRequest) -> str:
        replica = await asyncio.wait_for(self.router._choose_replica_for_request(pr), 5)
        return replica.replica_id.unique_id

    def complete(self, pr: PendingRequest, replica_id: str) -> None:
        rid = next(r.replica_id for r in self.replicas if r.replica_id.unique_id == replica_id)
        self.router.on_request_completed(rid, pr.metadata.internal_request_id)

    async def route_and_complete(self, pr: PendingRequest) -> str:
        chosen = await self.route(pr)
        self.complete(pr, chosen)
        return chosen

    async def ranking(self, pr: PendingRequest | None) -> list[str]:
        ranks = await self.router.choose_replicas(self.replicas, pr)
        assert all(len(rank) == 1 for rank in ranks)
        return [rank[0].replica_id.unique_id for rank in ranks]

    def done(self) -> None:
        """As Ray's tests check after each: no routing task or pending request left behind."""
        assert self.router.curr_num_routing_tasks == 0
        assert self.router.num_pending_requests == 0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_the_replica_holding_the_pipeline_wins_at_equal_queues():
    async def main():
        h = Harness([FakeRunningReplica("a", stats()), FakeRunningReplica("b", stats(tiers={"m": GPU})),
                     FakeRunningReplica("c", stats(tiers={"m": HOST}))])
        got = Counter([await h.route_and_complete(pending(spec())) for _ in range(20)])
        h.done()
        return got

    assert run(main()) == {"b": 20}


@pytest.mark.parametrize("busy_s,expected", [(8.0, "b"), (0.2, "a")])
def test_a_long_queue_loses_to_a_short_host_reload(busy_s, expected):
    async def main():
        h = Harness([FakeRunningReplica("a", stats(tiers={"m": GPU}, busy_s=busy_s, queue_len=4)),
                     FakeRunningReplica("b", stats(tiers={"m": HOST}))])
        return await h.route_and_complete(pending(spec()))

    assert run(main()) == expected


def test_lora_load_costs_add_to_the_base_model():
    async def main():  # a: base on GPU, LoRA remote (1 s); b: both on host (0.6 s)
        h = Harness([FakeRunningReplica("a", stats(tiers={"m": GPU})),
                     FakeRunningReplica("b", stats(tiers={"m": HOST, "l": HOST}))])
        return await h.ranking(pending(spec(loras=["l"])))

    assert run(main()) == ["b", "a"]


@pytest.mark.parametrize("contention,nodes,expected", [
    (0.0, ("n1", "n1"), "b"),  # contention ignored: b's 0.5 s host reload beats a's 3 s queue
    (1.0, ("n1", "n1"), "a"),  # b shares a's node: its reload and 3 s compute run beside a's job
    (1.0, ("n1", "n2"), "b"),  # b on a node of its own: nothing slows it
])
def test_replicas_sharing_a_node_slow_each_other(contention, nodes, expected):
    async def main():  # a holds m and runs one 3 s request; b has m in host memory (0.5 s)
        def busy(**kw):
            return {**stats(**kw), "compute_s": 3.0}
        h = Harness([FakeRunningReplica("a", busy(tiers={"m": GPU}, busy_s=3.0, queue_len=1), node=nodes[0]),
                     FakeRunningReplica("b", busy(tiers={"m": HOST}), node=nodes[1])],
                    policy_args={"band_pools": False, "host_contention": contention})
        return (await h.ranking(pending(spec())))[0]

    assert run(main()) == expected


def test_stale_or_missing_stats_fall_back_to_queue_length():
    async def main():
        a = FakeRunningReplica("a", stats(tiers={"m": GPU}), queue_len=3)  # holds m, 3 queued
        b = FakeRunningReplica("b", stats(), queue_len=0)
        h = Harness([a, b])
        await h.probe()
        fresh = await h.route_and_complete(pending(spec()))
        h.timer.advance(10.0)  # both reports are now 10 s old (stale after 4 s)
        stale = await h.route_and_complete(pending(spec()))
        a.stats, b.stats = {}, {}  # never reported
        missing = await h.route_and_complete(pending(spec()))
        return fresh, stale, missing

    assert run(main()) == ("a", "b", "b")


def test_stale_stats_break_equal_queues_at_random():
    async def main():
        h = Harness([FakeRunningReplica(x, stats(t=NOW - 60, tiers={"m": GPU} if x == "a" else {}))
                     for x in "abc"])
        await h.probe()
        return Counter([await h.route_and_complete(pending(spec())) for _ in range(60)])

    got = run(main())
    assert set(got) == {"a", "b", "c"} and max(got.values()) < 40


def test_a_burst_spreads_instead_of_landing_on_the_holder():
    """Nine concurrent requests between two stats reports: each one routed adds its expected
    service to its replica's wait, so the host copies take their share (without this accounting
    all nine go to the holder); once they complete and newer stats arrive, the holder wins again."""
    async def main():
        reps = [FakeRunningReplica("a", stats(tiers={"m": GPU})),
                FakeRunningReplica("b", stats(tiers={"m": HOST})),
                FakeRunningReplica("c", stats(tiers={"m": HOST}))]
        h = Harness(reps)
        prs = [pending(spec()) for _ in range(9)]
        chosen = await asyncio.gather(*(h.route(pr) for pr in prs))
        for pr, r in zip(prs, chosen):
            h.complete(pr, r)
        assert not any(h.router._flights.values()) and not h.router._tentative
        h.timer.advance(0.5)
        for r in reps:  # b and c evicted m again (to host)
            r.stats = {**r.stats, "t": NOW + 0.5}
        after = await h.route_and_complete(pending(spec()))
        h.done()
        return Counter(chosen), after

    burst, after = run(main())
    assert burst == {"a": 3, "b": 3, "c": 3}, burst
    assert after == "a"


def test_a_routed_pipeline_counts_as_loading_there_until_newer_stats():
    async def main():
        reps = [FakeRunningReplica(x, stats()) for x in "abc"]  # nobody holds m (10 s to load)
        h = Harness(reps)
        first = await h.route_and_complete(pending(spec()))
        again = [await h.route_and_complete(pending(spec())) for _ in range(5)]
        h.timer.advance(0.5)  # a newer report from `first`: m evicted, one request queued
        holder = next(r for r in reps if r.replica_id.unique_id == first)
        holder.stats = stats(t=NOW + 0.5, busy_s=1.0, queue_len=1)
        later = await h.route_and_complete(pending(spec()))
        return first, again, later

    first, again, later = run(main())
    assert again == [first] * 5
    assert later != first


def test_a_routed_request_adds_its_own_expected_compute_not_the_replicas_mean():
    """A heavy request routed to ``a`` makes ``a`` busy for heavy's expected compute (the
    replicas' ``compute_per_step_s``: 1 s per step x 2 steps), so the next light request pays a
    0.5 s host reload on ``b`` rather than queue behind it. Priced at ``a``'s mean service time
    (0.3 s, mostly light requests) it would queue behind the heavy one."""
    def published(tiers):
        return {**stats(tiers=tiers), "service_s": 0.3, "compute_s": 0.3,
                "compute_per_step_s": {"h": {"0": 1.0}, "m": {"0": 0.05}}}

    def request(base):
        return pending(GenerationSpec(prompt="p", base_model=base, width=64, height=64, steps=2,
                                      guidance_scale=0.0, seed=0))

    async def main(table: bool):
        reps = [FakeRunningReplica("a", published({"m": GPU, "h": GPU})),
                FakeRunningReplica("b", published({"m": HOST}))]
        if not table:
            for r in reps:
                del r.stats["compute_per_step_s"]
        h = Harness(reps)
        heavy = await h.route(request("h"))  # only a holds h: 10 s to load it on b
        light = await h.route(request("m"))
        return heavy, light

    assert run(main(table=True)) == ("a", "b")
    assert run(main(table=False)) == ("a", "a")  # without the figures: the mean, as before


def test_loading_in_the_stats_counts_as_resident():
    async def main():
        h = Harness([FakeRunningReplica("a", stats(loading=["m"], busy_s=2.0, queue_len=1)),
                     FakeRunningReplica("b", stats())])
        return await h.route_and_complete(pending(spec()))

    assert run(main()) == "a"  # 2 s behind the load beats a 10 s load


def test_calls_without_a_spec_route_by_queue_only():
    async def main():
        h = Harness([FakeRunningReplica("a", stats(tiers={"m": GPU}, busy_s=3.0, queue_len=3)),
                     FakeRunningReplica("b", stats())])
        ready = await h.route_and_complete(pending())  # e.g. handle.ready.remote()
        by_kwarg = await h.ranking(pending(spec=spec(), images=None))  # spec found in kwargs too
        no_request = await h.ranking(None)
        h.done()
        return ready, by_kwarg, no_request

    ready, by_kwarg, no_request = run(main())
    assert ready == "b"
    assert by_kwarg == ["a", "b"]  # with the spec: 3 s of queue beats a 10 s load
    assert no_request == ["b", "a"]


def test_ranking_is_the_policy_choice_then_expected_latency():
    async def main():
        reps = [FakeRunningReplica("a", stats(tiers={"m": HOST}, busy_s=0.1, queue_len=1)),  # 0.6 s
                FakeRunningReplica("b", stats(tiers={"m": GPU}, busy_s=3.0, queue_len=1)),   # 3 s
                FakeRunningReplica("c", stats(busy_s=1.0, queue_len=1)),                     # 11 s
                FakeRunningReplica("d", stats(tiers={"m": HOST}, busy_s=6.0, queue_len=2))]  # 6.5 s
        latency = await Harness(reps).ranking(pending(spec()))
        # with slack, b (nothing to load, within 5 s of the best) is chosen; the rest follow by
        # expected latency, so Ray's fallback after a rejection still follows the cache
        slack = await Harness(reps, policy_args={"slack_s": 5.0}).ranking(pending(spec()))
        return latency, slack

    assert run(main()) == (["a", "b", "d", "c"], ["b", "a", "d", "c"])


def test_replicas_known_to_be_full_are_ranked_last():
    async def main():
        h = Harness([FakeRunningReplica("a", stats(tiers={"m": GPU}), queue_len=MAX_ONGOING),
                     FakeRunningReplica("b", stats(), queue_len=1)])
        await h.probe()
        return await h.ranking(pending(spec()))

    assert run(main()) == ["b", "a"]


def test_when_every_replica_is_full_the_request_waits_then_goes_to_the_first_free():
    async def main():
        a = FakeRunningReplica("a", stats(tiers={"m": GPU}), queue_len=MAX_ONGOING)
        b = FakeRunningReplica("b", stats(), queue_len=MAX_ONGOING)
        h = Harness([a, b])
        task = asyncio.ensure_future(h.route(pending(spec())))
        done, _ = await asyncio.wait([task], timeout=0.05)  # backs off (the loop stays free)
        assert not done
        b.queue_len = 0
        chosen = await task
        h.done()
        return chosen

    assert run(main()) == "b"


def test_band_pools_from_the_stats():
    async def main():
        h = Harness([FakeRunningReplica("hot", stats(tiers={"m": GPU}, pool=HOT)),
                     FakeRunningReplica("shared", stats(busy_s=5.0, queue_len=2))])
        hot = await h.route_and_complete(pending(spec("m")))  # pinned on a hot replica: hot band
        cold = await h.route_and_complete(pending(spec("y")))  # held nowhere: stays off the hot pool
        return hot, cold

    assert run(main()) == ("hot", "shared")


def test_concurrent_calls_of_one_ingress_request_are_all_routed():
    """Handle calls made while serving one request share Ray's internal request id (a cascade's
    reruns, gathered); each must get its own replica instead of the first taking all."""
    async def main():
        h = Harness([FakeRunningReplica("a", stats(tiers={"m": GPU})), FakeRunningReplica("b", stats())])
        prs = [pending(spec(), internal_id="one-http-request") for _ in range(3)]
        chosen = await asyncio.gather(*(h.route(pr) for pr in prs))
        h.done()
        return chosen

    assert len(run(main())) == 3


def test_a_multiplexed_model_id_on_the_handle_is_ignored_and_not_retained():
    async def main():  # the ray-default ingress sets multiplexed_model_id = base model
        h = Harness([FakeRunningReplica("a", stats()), FakeRunningReplica("b", stats(tiers={"m": GPU}))])
        chosen = []
        for _ in range(5):
            pr = pending(spec())
            pr.metadata.multiplexed_model_id = "a"
            chosen.append(await h.route_and_complete(pr))
        h.done()
        return chosen, dict(h.router._pending_requests_by_model_id)

    chosen, retained = run(main())
    assert chosen == ["b"] * 5 and retained == {}


def test_completion_releases_the_flight_and_a_rejection_releases_first():
    """Ray calls on_request_completed for a rejected request too (never accepted); with two
    requests of one internal id on a replica, the rejected one's flight is the one released."""
    async def main():
        a, b = FakeRunningReplica("a", stats(tiers={"m": GPU})), FakeRunningReplica("b", stats())
        h = Harness([a, b])
        accepted, rejected = pending(spec(), internal_id="x"), pending(spec(), internal_id="x")
        assert await h.route(accepted) == "a"
        h.router.on_request_routed(accepted, a.replica_id, None)
        h.router._record_flight(rejected, a)  # assigned to a, then rejected by it
        h.router.on_request_completed(a.replica_id, "x")
        left = [f.request for f in h.router._flights[a.replica_id]]
        h.router.on_request_completed(a.replica_id, "x")
        h.router.on_request_completed(a.replica_id, "x")  # unknown by now: ignored
        return left == [id(accepted)], h.router._flights[a.replica_id]

    assert run(main()) == (True, [])


@pytest.mark.parametrize("bad", [{"t": "yesterday", "tiers": None, "busy_s": "x"},
                                 {"t": NOW, "tiers": {"m": "gpu"}, "load_cost_s": {"m": [1]}},
                                 {"t": NOW, "tiers": ["m"], "pool": None},
                                 {"t": NOW, "tiers": {}, "loading": 5, "load_cost_s": [1, 2]}])
def test_unreadable_stats_never_raise_and_spoil_only_their_replica(bad):
    async def main():
        h = Harness([FakeRunningReplica("a", bad), FakeRunningReplica("b", stats()),
                     FakeRunningReplica("c", stats(tiers={"m": GPU}))])
        return [await h.route_and_complete(pending(spec())) for _ in range(3)]

    assert run(main()) == ["c"] * 3


@pytest.mark.parametrize("skew_s,expected", [(1.0, "a"), (-3.0, "a"), (10.0, "b")])
def test_stats_from_a_replica_clock_ahead_are_skew_not_staleness(skew_s, expected):
    async def main():
        a = FakeRunningReplica("a", stats(t=NOW + skew_s, tiers={"m": GPU}), queue_len=2)
        h = Harness([a, FakeRunningReplica("b", stats(t=NOW + skew_s), queue_len=0)])
        await h.probe()
        return await h.route_and_complete(pending(spec()))

    assert run(main()) == expected  # 10 s off (stale after 4): shortest queue


def test_find_spec():
    async def main():
        s = spec()
        assert find_spec(pending(s, [b"img"])) is s
        assert find_spec(pending(images=None, spec=s)) is s
        assert find_spec(pending("not a spec")) is None
        assert find_spec(None) is None

    run(main())


def test_router_config_is_the_request_router_config_deployment_option():
    config = ServeConfig.model_validate({
        "models": [{"id": "m", "kind": "base", "path": "m"}, {"id": "l", "kind": "lora", "path": "l"},
                   {"id": "c", "kind": "controlnet", "path": "c"}],
        "control": {"report_period_s": 0.5, "routing": "least-expected-latency",
                    "routing_args": {"slack_s": 2.0}}})
    option = router_config(config)
    json.dumps(option["request_router_kwargs"])  # Ray requires JSON-serialisable kwargs
    parsed = RequestRouterConfig(**option)
    assert parsed.get_request_router_class() is CacheAwareRouter
    assert parsed.request_routing_stats_period_s == 0.5
    kwargs = parsed.request_router_kwargs
    assert kwargs["policy"] == "least-expected-latency" and kwargs["policy_args"] == {"slack_s": 2.0}
    assert kwargs["kinds"] == {"m": "base", "l": "lora", "c": "controlnet"}
    assert kwargs["stale_after_s"] > 3 * 0.5
