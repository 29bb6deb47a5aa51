"""Shared fixtures: tiny real models built once per session, configs pointing at them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "app" / "configs" / "default.yaml"


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo models, built from scratch with the real builder (a few seconds)."""
    from app.demo_models import build_demo_models

    out = tmp_path_factory.mktemp("demo-models")
    build_demo_models(out, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def demo_config(demo_dir):
    from deployments.config import load_config

    return load_config(DEFAULT_CONFIG, {"model_root": str(demo_dir)})


@pytest.fixture(scope="session", autouse=True)
def _quiet_env():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield
