"""The `t2i` command line: help, config errors and missing models stop with exit code 2."""

from __future__ import annotations

import pytest
import yaml

from app.cli import build_parser, main
from tests.conftest import DEFAULT_CONFIG


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "demo-models", "check-config", "trace"):
        assert command in out
    serve_help = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    assert "--config" in serve_help and "SIGTERM" in serve_help


def test_invalid_config_stops_serve_naming_the_field(tmp_path, capsys):
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["deployments"]["base_model"]["num_replicas"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["serve", "--config", str(bad)]) == 2
    assert "deployments.base_model.num_replicas" in capsys.readouterr().err
    assert main(["check-config", str(bad)]) == 2


def test_serve_without_models_says_how_to_build_them(tmp_path, capsys):
    assert main(["serve", "--model-root", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert "tiny-sd-light" in err and "t2i demo-models" in err


def test_check_config_accepts_the_shipped_configs(capsys):
    assert main(["check-config", str(DEFAULT_CONFIG)]) == 0
    assert "valid" in capsys.readouterr().out


def test_a_local_ray_start_that_times_out_is_tried_once_more(monkeypatch):
    import ray

    from app.server import init_ray

    calls, shutdowns = [], []

    def fake_init(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise RuntimeError("Timed out waiting for file /tmp/x/gcs_server_port")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))
    init_ray(num_cpus=2, temp_dir="/tmp/t2i-ray-test")
    assert len(calls) == 2 and len(shutdowns) == 1
    assert all(c["num_cpus"] == 2 and c["_temp_dir"] == "/tmp/t2i-ray-test" for c in calls)
    calls.clear()

    def always_fails(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("no head")

    monkeypatch.setattr(ray, "init", always_fails)
    with pytest.raises(RuntimeError, match="no head"):  # the last attempt's error reaches the caller
        init_ray(num_cpus=2, attempts=2)
    assert len(calls) == 2
