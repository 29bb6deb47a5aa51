"""Errors that cross deployment boundaries.

Ray re-raises a replica's exception in the caller as a subclass of the original type, so the
ingress can map these to HTTP statuses. Each defines __reduce__ because Ray pickles exceptions and
the default pickling of an exception with a custom __init__ signature fails on the way back.
"""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A registered model exists but could not be loaded (corrupt file, wrong layout, ...)."""

    def __init__(self, model_id: str, reason: str):
        super().__init__(f"model {model_id!r} failed to load: {reason}")
        self.model_id = model_id
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.model_id, self.reason))


class RequestError(ValueError):
    """A request that is well-formed JSON but cannot be served as asked; names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):
        return (type(self), (self.field, self.message))


class CoordinatorUnavailableError(RuntimeError):
    """The deployment's cache coordinator did not answer (dead, being recreated, or slow)."""

    def __init__(self, reason: str):
        super().__init__(f"the cache coordinator is unavailable ({reason})")
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.reason,))


class DeadlineExceededError(RuntimeError):
    """A request's deadline passed; `where` is "queued" (before its generation started) or
    "running" (between denoising steps): the work was dropped, not finished."""

    def __init__(self, where: str, overdue_s: float):
        super().__init__(f"the request's deadline passed while {where} "
                         f"({overdue_s:.3f} s over); the work was dropped")
        self.where = where
        self.overdue_s = overdue_s

    def __reduce__(self):
        return (type(self), (self.where, self.overdue_s))


def check_deadline(deadline: float | None, where: str, now: float) -> None:
    """Raise DeadlineExceededError when `now` (time.time()) is past `deadline`."""
    if deadline is not None and now > deadline:
        raise DeadlineExceededError(where, now - deadline)
