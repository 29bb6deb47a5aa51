"""API keys on real Ray Serve, with the real openai client.

A second Serve app holds only an Ingress with keys, under /keyed, and calls the session app's
deployments through their handles: a few seconds, instead of a second model stack.
"""

from __future__ import annotations

import httpx
import pytest

from tests.integration.waiting import answers, until

pytestmark = pytest.mark.integration

API, ADMIN = "sk-live-api-2c1f9e", "sk-live-admin-7d03aa"
PREFIX = "/keyed"


@pytest.fixture(scope="module")
def keyed_url(base_url, serve_config, tmp_path_factory, monkeypatch_module):
    from ray import serve

    from app.builder import deployment_options
    from app.ingress import T2IIngress
    from app.auth import AccessKeys
    from deployments.config import SecurityConfig

    keys = tmp_path_factory.mktemp("keys") / "api.keys"
    keys.write_text(f"# live test keys\n{API}\n")
    monkeypatch_module.setenv("T2I_ADMIN_KEYS", ADMIN)
    config = serve_config.model_copy(update={"security": SecurityConfig(api_keys_file=str(keys))})
    access = AccessKeys.load(config.security)  # what build_app does: file and environment
    handles = [serve.get_deployment_handle(name, app_name=serve_config.app_name)
               for name in ("BaseModel", "ControlNet", "LoRAStore", "Discriminator")]
    app = serve.deployment(T2IIngress).options(
        **deployment_options(config.deployments.ingress, "KeyedIngress")).bind(
        config.model_dump(mode="json"), *handles, access)
    serve.run(app, name="t2i-keyed", route_prefix=PREFIX, blocking=False)
    url = f"{base_url}{PREFIX}"
    if not until(lambda: answers(url), timeout_s=60):
        pytest.fail("the keyed ingress did not answer /healthz within 60 s")
    yield url
    serve.delete("t2i-keyed")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_openai_client_with_the_key_is_served_and_without_it_is_refused(keyed_url):
    import openai

    client = openai.OpenAI(base_url=f"{keyed_url}/v1", api_key=API, max_retries=0)
    assert "tiny-sd-light" in {m.id for m in client.models.list()}
    result = client.images.generate(model="tiny-sd-light", prompt="a tiny red house", size="32x32",
                                    response_format="b64_json", extra_body={"seed": 3})
    assert len(result.data) == 1 and result.data[0].b64_json
    wrong = openai.OpenAI(base_url=f"{keyed_url}/v1", api_key="sk-live-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert "sk-live-wrong" not in str(info.value)
    with pytest.raises(openai.PermissionDeniedError):  # an API key is not an admin key
        client.post("/cache/unpin", body={"models": ["tiny-sd-heavy"]}, cast_to=object)


def test_health_is_open_and_admin_routes_take_the_admin_key(keyed_url):
    assert httpx.get(f"{keyed_url}/healthz").status_code == 200
    assert httpx.get(f"{keyed_url}/readyz", timeout=30).status_code == 200
    missing = httpx.get(f"{keyed_url}/v1/models")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "invalid_api_key"
    unpinned = httpx.post(f"{keyed_url}/v1/cache/unpin", json={"models": ["tiny-sd-heavy"]},
                          headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert unpinned.status_code == 200, unpinned.text
