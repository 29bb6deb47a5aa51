"""Request bodies the ingress refuses before parsing: over `limits.max_body_bytes`, or not UTF-8.

A pure ASGI middleware, so nothing is buffered beyond the limit: a declared Content-Length over it
is a 413 before one body byte is read, and a body without one (chunked) is counted as it arrives
and refused the moment it passes the limit. A JSON body that is not UTF-8 is a 400 naming the
byte, instead of the parser's generic error. The body is handed on unchanged otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.schemas import error_body


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """``max_bytes`` is called per request (under Serve it reads the replica's config)."""

    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int]):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        declared = headers.get("content-length", "")
        too_large = _reply(413, error_body(f"request body larger than limits.max_body_bytes={limit}", None))
        if declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        try:
            body = await _read_body(receive, limit)
        except BodyTooLarge:
            await too_large(scope, receive, send)
            return
        if "json" in headers.get("content-type", ""):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                await _reply(400, error_body(f"body: not valid UTF-8 (byte {exc.start}); JSON bodies "
                                             "must be UTF-8", "body"))(scope, receive, send)
                return
        await self.app(scope, _replay(body, receive), send)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the client's disconnect, as the server sends it

    return replayed


def _reply(status: int, content: dict) -> JSONResponse:
    # connection: close, since the rest of a refused body is never read
    return JSONResponse(status_code=status, content=content, headers={"Connection": "close"})
