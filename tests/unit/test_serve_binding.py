"""`t2i serve` in its embedded default: loopback only, no dashboard, and key files checked
before Ray starts."""

from __future__ import annotations

import yaml

from app.auth import AccessKeys, access_summary
from app.cli import main
from deployments.config import ServeConfig

MODELS = [{"id": "tiny-base", "kind": "base", "hub_id": "org/tiny"}]


def test_the_embedded_ray_has_no_dashboard_and_serve_binds_to_loopback(monkeypatch):
    import ray
    from ray import serve

    import app.builder
    from app import server

    calls: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.setdefault("init", kwargs))
    monkeypatch.setattr(serve, "start", lambda **kwargs: calls.setdefault("start", kwargs))
    monkeypatch.setattr(serve, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(app.builder, "build_app", lambda config: None)
    server.start_serve(ServeConfig(models=MODELS))
    assert calls["init"]["include_dashboard"] is False
    assert calls["init"]["dashboard_host"] == "127.0.0.1"
    assert calls["start"]["http_options"]["host"] == "127.0.0.1"


def test_serve_stops_on_an_unreadable_key_file_before_ray_starts(tmp_path, capsys, monkeypatch):
    import app.server

    monkeypatch.setattr(app.server, "run_server", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("Ray must not start with a bad key file")))
    config = tmp_path / "keys.yaml"
    config.write_text(yaml.safe_dump({"models": MODELS,
                                      "security": {"api_keys_file": str(tmp_path / "absent.keys")}}))
    assert main(["serve", "--config", str(config)]) == 2
    assert "security.api_keys_file: cannot read" in capsys.readouterr().err


def test_serve_says_whether_keys_guard_the_api_without_showing_them():
    keys = AccessKeys.from_keys(api=["sk-a1", "sk-a2"], admin=["sk-admin"])
    line = access_summary("0.0.0.0", keys)
    assert "2 API keys, 1 admin keys" in line and "sk-" not in line
    assert "WARNING" in access_summary("0.0.0.0", AccessKeys())
    assert "WARNING" not in access_summary("127.0.0.1", AccessKeys())
