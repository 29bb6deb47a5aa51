"""What every benchmark records beside its figures: which code ran, on what, and where the
result went. (Scripts put the repository root on sys.path, so this imports either way they run.)"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(**extra) -> dict:
    """Python, platform, cores, load average and the commit measured (others edit concurrently)."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0],
            "git_commit": git("rev-parse", "--short", "HEAD"), **extra}


def write_result(path: str | Path, doc: dict) -> None:
    """JSON under benchmarks/results (or `path`), numpy scalars as plain numbers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(f"wrote {path}")
