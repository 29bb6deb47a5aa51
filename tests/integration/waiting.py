"""Waiting on a live service in the integration tests: poll until a check holds or time runs out."""

from __future__ import annotations

import time

import httpx


def until(check, timeout_s: float = 60.0, every_s: float = 0.5):
    """`check()`'s first truthy value, polled every `every_s` for up to `timeout_s` (then its last
    value, falsy)."""
    deadline = time.time() + timeout_s
    while True:
        value = check()
        if value or time.time() > deadline:
            return value
        time.sleep(every_s)


def answers(url: str, path: str = "/healthz") -> bool:
    """Whether GET `url + path` answers 200 now (a connection error is a no)."""
    try:
        return httpx.get(f"{url}{path}", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
