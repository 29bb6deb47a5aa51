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
