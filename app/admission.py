"""Admission at the ingress: its own in-flight limit and each request's deadline.

The limit is a plain counter on the replica's event loop (one loop, so no lock): a request over
`limits.max_inflight_requests` is refused at once with OverloadedError (503 + Retry-After)
instead of waiting, and only the generation route counts, so /healthz and /v1/models still answer
under overload. A counter rather than Ray's options on the ingress deployment: Ray's proxy would
queue the extra requests (or, past the ingress's `max_queued_requests`, answer with a plain-text
503 outside the OpenAI error shape) and would count health checks as well; the ingress's Ray
options stay the outer bound (the config keeps them above this limit).

The deadline is an absolute wall-clock time (`time.time()`), so it means the same in every
process it reaches; replicas on other nodes rely on the cluster's clocks being synchronised.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from deployments.errors import RequestError

TIMEOUT_HEADER = "X-Request-Timeout"


class OverloadedError(Exception):
    """The request was shed (503): the ingress is at its in-flight limit, or a deployment's
    bounded queue is full. `retry_after_s`: None for the config's `limits.retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InflightLimit:
    """At most `limit` requests inside `admit()` at once; one more raises OverloadedError."""

    def __init__(self, limit: int):
        self.limit = limit
        self.inflight = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self.inflight >= self.limit:
            raise OverloadedError(f"the service is at its limit of {self.limit} requests in flight "
                                  "(limits.max_inflight_requests); retry shortly")
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1


def request_timeout_s(header: str | None, default_s: float) -> float:
    """Seconds the request may take: the config's default, or less when the client's
    X-Request-Timeout header asks for less (a client cannot lengthen it). A value that is not
    a positive, finite number of seconds is a RequestError naming the header (400)."""
    if header is None:
        return default_s
    try:
        seconds = float(header.strip())
    except ValueError:
        raise RequestError(TIMEOUT_HEADER, f"must be a number of seconds, got {header[:32]!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise RequestError(TIMEOUT_HEADER, f"must be a positive, finite number of seconds, got {header[:32]!r}")
    return min(seconds, default_s)
