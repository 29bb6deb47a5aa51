"""Small hand-written trace fixtures in the real schemas (tests/fixtures/traces).

Loaders find two of the real files by name (a trace's `qps.csv` beside it, DiffServe's
`confidence_scores.csv`). The fixtures standing in for them are committed under other names, so
they can never be mistaken for the real data, and restored to the real names in a temporary copy
of the folder that the tests read.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "fixtures" / "traces"
REAL_NAMES = {"qps.fixture.csv": "qps.csv", "confidence_scores.fixture.csv": "confidence_scores.csv"}


def _assemble() -> Path:
    out = Path(tempfile.mkdtemp(prefix="t2i-trace-fixtures-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    for path in SOURCE.iterdir():
        if path.is_file():
            shutil.copy(path, out / REAL_NAMES.get(path.name, path.name))
    return out


FIX = _assemble()
