"""GenerationResult.replica: the BaseModel replica's Serve id, None outside Serve (the live id is
checked over HTTP in tests/integration/test_http_api.py)."""

from __future__ import annotations

from deployments.base_model import _replica_id
from deployments.spec import GenerationResult


def test_outside_serve_there_is_no_replica_id():
    assert _replica_id() is None
    assert GenerationResult(images=[]).replica is None
