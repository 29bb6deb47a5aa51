"""The coordinator control set on the suite's live service (the default, control.policies:
coordinator): the operator's cache view and pins, Prometheus metrics, and serving through a
coordinator crash."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.waiting import until

pytestmark = pytest.mark.integration


def _generate(http, model: str = "tiny-sd-light", **extra) -> dict:
    response = http.post("/v1/images/generations", json={"prompt": "a kite", "model": model, "size": "32x32",
                                                         **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_cache_view_shows_what_the_replica_holds_and_operator_pins_round_trip(http):
    served = _generate(http, "tiny-sd-heavy")
    replica = served["t2i"]["replica"]

    def holder():
        view = http.get("/v1/cache").json()
        rows = {r["id"]: r for r in view["replicas"]}
        return view if "tiny-sd-heavy" in rows.get(replica, {}).get("tiers", {}).get("gpu", []) else None

    view = until(holder)  # replicas report once per control.report_period_s
    assert view is not None, http.get("/v1/cache").json()
    assert {"replicas", "bands", "operator_pins", "prefetch"} <= set(view)
    row = next(r for r in view["replicas"] if r["id"] == replica)
    assert row["gpu_free_bytes"] >= 0 and row["report_age_s"] < 30

    pinned = http.post("/v1/cache/pin", json={"models": ["tiny-sd-heavy"], "replicas": [replica]})
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["pinned"] == {"tiny-sd-heavy": [replica]}
    assert http.get("/v1/cache").json()["operator_pins"]["tiny-sd-heavy"] == [replica]
    # the pin reaches the replica with its next actions
    assert until(lambda: "tiny-sd-heavy" in next(
        r for r in http.get("/v1/cache").json()["replicas"] if r["id"] == replica)["pins"])
    unpinned = http.post("/v1/cache/unpin", json={"models": ["tiny-sd-heavy"]})
    assert unpinned.status_code == 200 and unpinned.json()["unpinned"] == ["tiny-sd-heavy"]
    assert "tiny-sd-heavy" not in http.get("/v1/cache").json()["operator_pins"]


def test_pin_requests_with_bad_ids_are_refused_by_name(http):
    bad = http.post("/v1/cache/pin", json={"models": ["tiny-lora-ink"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "models[0]"
    assert "not a base model or ControlNet" in bad.json()["error"]["message"]
    assert http.post("/v1/cache/pin", json={"models": ["../etc"]}).status_code == 400
    assert http.post("/v1/cache/pin", json={"models": []}).status_code == 400
    wrong = http.post("/v1/cache/unpin", json={"models": ["tiny-sd-light"], "replicas": ["x"]})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "replicas"


def test_prometheus_metrics_count_the_cache_loads(http, serve_config):
    _generate(http, "tiny-sd-light")
    url = f"http://127.0.0.1:{serve_config.metrics_export_port}/metrics"

    def scraped():
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            return None
        return text if "ray_t2i_cache_loads_total" in text else None

    text = until(scraped, timeout_s=90, every_s=2)  # Ray exports on its own period
    assert text is not None, f"no t2i cache metrics at {url}"
    loads = [line for line in text.splitlines() if line.startswith("ray_t2i_cache_loads_total{")]
    assert any('kind="base"' in line and float(line.rsplit(" ", 1)[1]) >= 1 for line in loads), loads
    assert "ray_t2i_replica_queue_length{" in text and "ray_t2i_cache_bytes{" in text


def test_requests_keep_succeeding_while_the_coordinator_is_killed_and_recreated(http):
    import ray

    named = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("SERVE_DEPLOYMENT_ACTOR::") and a["name"].endswith("::coordinator")]
    assert len(named) == 1, named
    old = ray.get_actor(named[0]["name"], namespace=named[0]["namespace"])
    ray.kill(old, no_restart=True)
    for model in ("tiny-sd-light", "tiny-sd-heavy", "tiny-sd-light"):
        _generate(http, model)  # no request waits on, or fails because of, the coordinator
    away = http.get("/v1/cache")
    assert away.status_code in (200, 503)  # 503 until the Serve controller recreated it
    if away.status_code == 503:
        assert away.json()["error"]["type"] == "cache_coordinator_unavailable"
    # the controller health-checks deployment-scoped actors and starts a new one, which rebuilds
    # its view from the replicas' next reports
    back = until(lambda: (lambda r: r.json() if r.status_code == 200 and r.json()["replicas"] else None)(
        http.get("/v1/cache")), timeout_s=120, every_s=2)
    assert back is not None, "the coordinator did not come back"
    new = ray.get_actor(named[0]["name"], namespace=named[0]["namespace"])
    assert new._actor_id != old._actor_id  # a new instance, not the killed one answering
    _generate(http, "tiny-sd-light")
