"""The ingress's HTTP surface without Ray: API keys, admin keys, error shapes, /readyz.

The real FastAPI app (`app.ingress.api`, routes bound by Ray's class-based view) runs under
Starlette's TestClient; the replica context Ray would provide is replaced by one whose servable
object is an `Ingress` over fake deployment handles.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from ray.exceptions import RayTaskError

from app.auth import ADMIN_PATHS, AccessKeys, parse_keys
from app.ingress import Ingress, api
from deployments.config import ConfigError, SecurityConfig, ServeConfig
from deployments.errors import RequestError
from tests.unit.fake_handles import FakeHandle

API, ADMIN = "sk-api-0123456789", "sk-admin-9876543210"
CONFIG = ServeConfig(models=[{"id": "tiny-base", "kind": "base", "hub_id": "org/tiny"},
                             {"id": "tiny-cn", "kind": "controlnet", "hub_id": "org/cn"}])


async def _ok(*_args, **_kwargs) -> dict:
    return {"ok": True}


def _wrapped(cause: Exception) -> Exception:
    """What Ray raises in the caller for an exception raised inside a replica."""
    traceback = ("\x1b[36mray::ServeReplica:t2i:BaseModel.handle_request()\x1b[39m (pid=4242, "
                 "ip=10.0.0.7, actor_id=abcdef0123)\nTraceback (most recent call last):\n"
                 '  File "/opt/venv/lib/python3.11/site-packages/ray/serve/_private/replica.py", '
                 f"line 1, in call\n{type(cause).__name__}: {cause}")
    return RayTaskError("handle_request", traceback, cause).as_instanceof_cause()


def _ingress(access: AccessKeys = AccessKeys(), coordinator=_ok, **handles) -> Ingress:
    base = FakeHandle(ready=_ok, coordinator_call=coordinator)
    return Ingress(CONFIG, base, handles.get("controlnet", FakeHandle(ready=_ok)),
                   FakeHandle(stats=_ok), handles.get("discriminator"), access=access)


@pytest.fixture
def serve_as(monkeypatch):
    """Route the app's requests to the given Ingress, as Ray's replica context would."""
    import ray.serve

    def client_for(ingress: Ingress) -> TestClient:
        monkeypatch.setattr(ray.serve, "get_replica_context",
                            lambda: SimpleNamespace(servable_object=ingress))
        return TestClient(api, raise_server_exceptions=False)

    return client_for


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _assert_auth_error(response, status: int, kind: str, key: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and error["message"]
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if key is not None:
        assert key not in response.text


# -- API keys --------------------------------------------------------------------------------
def test_without_keys_the_api_is_open(serve_as):
    client = serve_as(_ingress())
    assert client.get("/v1/models").status_code == 200
    assert client.post("/v1/cache/pin", json={"models": ["tiny-base"]}).status_code == 200


def test_api_keys_guard_every_v1_route_but_not_health(serve_as):
    client = serve_as(_ingress(AccessKeys.from_keys(api=[API])))
    for method, path in [("get", "/v1/models"), ("get", "/v1/cache"),
                         ("post", "/v1/images/generations"), ("post", "/v1/cache/pin"),
                         ("get", "/v1/no-such-route")]:
        _assert_auth_error(client.request(method, path), 401, "invalid_api_key")
        wrong = "sk-wrong-key-that-must-not-be-echoed"
        _assert_auth_error(client.request(method, path, headers=_bearer(wrong)), 401,
                           "invalid_api_key", key=wrong)
    _assert_auth_error(client.get("/v1/models", headers={"Authorization": API}), 401, "invalid_api_key")
    assert client.get("/v1/models", headers=_bearer(API)).json()["object"] == "list"
    assert client.get("/v1/models", headers={"authorization": f"bearer {API}"}).status_code == 200
    # no key, and the body is never parsed: a 401, not a 400 for the bad JSON
    _assert_auth_error(client.post("/v1/images/generations", content=b"{not json",
                                   headers={"content-type": "application/json"}), 401, "invalid_api_key")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_admin_keys_guard_pin_and_unpin_and_a_plain_api_key_gets_403(serve_as):
    client = serve_as(_ingress(AccessKeys.from_keys(api=[API], admin=[ADMIN])))
    body = {"models": ["tiny-base"]}
    for path in sorted(ADMIN_PATHS):
        _assert_auth_error(client.post(path, json=body), 401, "invalid_api_key")
        _assert_auth_error(client.post(path, json=body, headers=_bearer(API)), 403, "permission_error",
                           key=API)
        assert client.post(path, json=body, headers=_bearer(ADMIN)).status_code == 200
    # an admin key is also an API key
    assert client.get("/v1/models", headers=_bearer(ADMIN)).status_code == 200
    assert client.get("/v1/cache", headers=_bearer(API)).status_code == 200


def test_admin_keys_alone_guard_only_the_admin_routes(serve_as):
    client = serve_as(_ingress(AccessKeys.from_keys(admin=[ADMIN])))
    assert client.get("/v1/models").status_code == 200
    _assert_auth_error(client.post("/v1/cache/pin", json={"models": ["tiny-base"]}), 401, "invalid_api_key")
    assert client.post("/v1/cache/unpin", json={"models": ["tiny-base"]},
                       headers=_bearer(ADMIN)).status_code == 200


def test_api_keys_alone_guard_the_admin_routes_too(serve_as):
    client = serve_as(_ingress(AccessKeys.from_keys(api=[API])))
    _assert_auth_error(client.post("/v1/cache/pin", json={"models": ["tiny-base"]}), 401, "invalid_api_key")
    assert client.post("/v1/cache/pin", json={"models": ["tiny-base"]},
                       headers=_bearer(API)).status_code == 200


def test_the_real_openai_client_sends_its_key(serve_as):
    import openai

    client = serve_as(_ingress(AccessKeys.from_keys(api=[API])))
    good = openai.OpenAI(base_url="http://testserver/v1", api_key=API, http_client=client, max_retries=0)
    assert {m.id for m in good.models.list()} == {"tiny-base", "tiny-cn"}
    bad = openai.OpenAI(base_url="http://testserver/v1", api_key="sk-nope", http_client=client,
                        max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_keys_load_from_files_and_environment_and_never_show(tmp_path):
    api_file, admin_file = tmp_path / "api.keys", tmp_path / "admin.keys"
    api_file.write_text(f"# rotated 2024-05\n{API}  # ci\n\nsk-second-key\n")
    admin_file.write_text(f"{ADMIN}\n")
    security = SecurityConfig(api_keys_file=str(api_file), admin_keys_file=str(admin_file))
    keys = AccessKeys.load(security, environ={"T2I_API_KEYS": "sk-env-one, sk-env-two,"})
    assert (len(keys.api), len(keys.admin)) == (4, 1)
    for key in (API, "sk-second-key", "sk-env-one", "sk-env-two"):
        assert keys.check("/v1/models", f"Bearer {key}") is None
    assert keys.check("/v1/models", "Bearer # ci") is not None
    assert keys.check("/v1/cache/pin", f"Bearer {ADMIN}") is None
    assert API not in repr(keys) and ADMIN not in repr(keys) and "api_keys=4" in repr(keys)
    only_env = AccessKeys.load(SecurityConfig(), environ={"T2I_ADMIN_KEYS": ADMIN})
    assert (len(only_env.api), len(only_env.admin)) == (0, 1)
    assert not AccessKeys.load(SecurityConfig(), environ={}).enabled


def test_bad_key_sources_fail_loudly_naming_the_field_not_the_key(tmp_path):
    empty = tmp_path / "empty.keys"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ConfigError, match=r"security.api_keys_file: .* holds no keys"):
        AccessKeys.load(SecurityConfig(api_keys_file=str(empty)), environ={})
    with pytest.raises(ConfigError, match=r"security.admin_keys_file: cannot read"):
        AccessKeys.load(SecurityConfig(admin_keys_file=str(tmp_path / "missing")), environ={})
    with pytest.raises(ConfigError, match="line 2") as info:
        parse_keys("sk-good\nsk-bad\u00e9key\n", "keys.txt")
    assert "sk-bad" not in str(info.value)


def test_openapi_declares_the_key_each_protected_route_needs():
    from app.auth import PROTECTED_PREFIX

    schema = api.openapi()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["APIKey"]["scheme"] == "bearer" and schemes["AdminKey"]["scheme"] == "bearer"
    assert "admin key" in schemes["AdminKey"]["description"]
    protected = [p for p in schema["paths"] if p.startswith(PROTECTED_PREFIX)]
    assert set(protected) >= {"/v1/models", "/v1/images/generations", "/v1/cache", *ADMIN_PATHS}
    for path in protected:
        for operation in schema["paths"][path].values():
            want = "AdminKey" if path in ADMIN_PATHS else "APIKey"
            assert operation["security"] == [{want: []}], path
            if path in ADMIN_PATHS:
                assert "admin key" in operation["description"]


# -- errors a client can use -------------------------------------------------------------------
def test_unknown_route_and_wrong_method_use_the_error_shape(serve_as):
    client = serve_as(_ingress())
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = client.get("/v1/images/generations")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


def test_a_replica_error_under_rays_wrapper_gives_its_one_line_message(serve_as):
    async def refuses(*_):
        raise _wrapped(RequestError("models[0]", "is pinned by another operator"))

    response = serve_as(_ingress(coordinator=refuses)).get("/v1/cache")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error == {"message": "models[0]: is pinned by another operator", "type": "invalid_request_error",
                     "param": "models[0]", "code": None}


def test_an_unexpected_error_is_one_line_with_a_request_id_and_the_details_go_to_the_log(serve_as, caplog):
    async def breaks(*_):
        raise _wrapped(KeyError("/srv/models/secret-path"))

    with caplog.at_level("ERROR", logger="ray.serve"):
        response = serve_as(_ingress(coordinator=breaks)).get("/v1/cache")
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    request_id = response.headers["x-request-id"]
    assert request_id in message and "\n" not in message
    for leak in ("Traceback", "ray::", "/srv/", "/opt/", "actor_id", "\x1b["):
        assert leak not in message
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)


# -- readiness -------------------------------------------------------------------------------
def test_readyz_names_the_deployment_that_does_not_answer(serve_as):
    async def hangs(*_):
        await asyncio.sleep(5)

    async def crashed(*_):
        raise _wrapped(RuntimeError("replica died"))

    ingress = _ingress(controlnet=FakeHandle(ready=hangs), discriminator=FakeHandle(ready=crashed))
    ingress.READY_TIMEOUT_S = 0.05
    client = serve_as(ingress)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.headers["retry-after"]
    body = response.json()
    message = body["error"]["message"]
    assert "ControlNet (no answer within 0.05 s)" in message and "Discriminator" in message
    assert "BaseModel" not in message and "LoRAStore" not in message
    assert body["deployments"]["BaseModel"]["ready"] is True
    assert client.get("/healthz").status_code == 200


def test_readyz_is_200_when_every_deployment_answers(serve_as):
    body = serve_as(_ingress(discriminator=FakeHandle(ready=_ok))).get("/readyz").json()
    assert body["ready"] is True
    assert set(body["deployments"]) == {"BaseModel", "ControlNet", "LoRAStore", "Discriminator"}


def test_a_client_supplied_request_id_reaches_the_log_only_when_it_is_a_plain_id(serve_as):
    async def breaks(*_):
        raise RuntimeError("boom")

    client = serve_as(_ingress(coordinator=breaks))
    plain = client.get("/v1/cache", headers={"X-Request-Id": "req-42.a_b"})
    assert "req-42.a_b" in plain.json()["error"]["message"] and "x-request-id" not in plain.headers
    forged = client.get("/v1/cache", headers={"X-Request-Id": "x\tFAKE LOG LINE"})
    assert "FAKE" not in forged.json()["error"]["message"]
    assert forged.headers["x-request-id"] in forged.json()["error"]["message"]
