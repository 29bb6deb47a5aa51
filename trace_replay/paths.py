"""Where the shared trace data lives: ``../shared/data`` beside the repository, or $T2I_SHARED_DATA."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("T2I_SHARED_DATA")
    return Path(env) if env else (REPO_ROOT / ".." / "shared" / "data").resolve()


def gentd26_dir() -> Path:
    return shared_data_dir() / "gentd26"


def diffserve_dir() -> Path:
    return shared_data_dir() / "diffserve"
