"""Stand-ins for Ray Serve handles in tests that drive the ingress without Ray."""

from __future__ import annotations

import asyncio


class FakeMethod:
    """`handle.method.remote(...)`: awaitable, like a DeploymentResponse."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, **kwargs):
        return asyncio.ensure_future(self.fn(*args, **kwargs))


class FakeHandle:
    """A handle whose methods are the given coroutine functions; `options()` is itself."""

    def __init__(self, **methods):
        for name, fn in methods.items():
            setattr(self, name, FakeMethod(fn))

    def options(self, **_):
        return self
