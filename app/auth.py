"""Optional API-key authentication: bearer keys from files or the environment, checked before
any route runs.

Keys are kept only as SHA-256 digests and compared with `secrets.compare_digest` against every
stored digest (no early exit), so neither the comparison time nor a repr, log line or error
message says anything about a key. With no key configured the API is open: the embedded default
binds to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.schemas import error_body
from deployments.config import ConfigError, SecurityConfig

API_KEYS_ENV = "T2I_API_KEYS"
ADMIN_KEYS_ENV = "T2I_ADMIN_KEYS"
PROTECTED_PREFIX = "/v1/"
ADMIN_PATHS = frozenset({"/v1/cache/pin", "/v1/cache/unpin"})

# OpenAPI declarations only (the middleware below enforces): /docs shows which key a route needs.
API_KEY = HTTPBearer(auto_error=False, scheme_name="APIKey", description=(
    "An API key (or an admin key), when the deployment configures keys "
    f"(security.api_keys_file, {API_KEYS_ENV})."))
ADMIN_KEY = HTTPBearer(auto_error=False, scheme_name="AdminKey", description=(
    f"An admin key when the deployment configures admin keys (security.admin_keys_file, "
    f"{ADMIN_KEYS_ENV}); otherwise an API key whenever API keys are configured."))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _matches(presented: bytes, digests: tuple[bytes, ...]) -> bool:
    found = False
    for digest in digests:  # every digest, so the time does not say which one matched
        found |= secrets.compare_digest(presented, digest)
    return found


def parse_keys(text: str, source: str, separator: str | None = None) -> list[str]:
    """Keys from a file's text (one per line, '#' comments) or an env value (comma-separated).
    A malformed key is reported by its position only, never by its text."""
    keys = []
    chunks = text.split(separator) if separator else text.splitlines()
    for number, chunk in enumerate(chunks, 1):
        key = (chunk if separator else chunk.split("#", 1)[0]).strip()
        if not key:
            continue
        if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
            where = f"entry {number}" if separator else f"line {number}"
            raise ConfigError(f"{source}: the key at {where} holds whitespace or characters an "
                              "HTTP header cannot carry")
        keys.append(key)
    return keys


def _read_file(path: str, field: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{field}: cannot read {path!r} ({type(exc).__name__}: "
                          f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'})") from None
    keys = parse_keys(text, f"{field} ({path!r})")
    if not keys:  # a configured but empty key file must not leave the API open
        raise ConfigError(f"{field}: {path!r} holds no keys")
    return keys


@dataclass(frozen=True)
class Denial:
    status: int
    message: str
    kind: str

    def response(self) -> JSONResponse:
        body = error_body(self.message, None, self.kind)
        body["error"]["code"] = self.kind
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        return JSONResponse(status_code=self.status, content=body, headers=headers)


@dataclass(frozen=True, repr=False)
class AccessKeys:
    """Digests of the API keys and admin keys this deployment accepts."""

    api: tuple[bytes, ...] = ()
    admin: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return f"AccessKeys(api_keys={len(self.api)}, admin_keys={len(self.admin)})"

    @classmethod
    def from_keys(cls, api: Iterable[str] = (), admin: Iterable[str] = ()) -> "AccessKeys":
        return cls(tuple(_digest(k) for k in dict.fromkeys(api)),
                   tuple(_digest(k) for k in dict.fromkeys(admin)))

    @classmethod
    def load(cls, security: SecurityConfig, environ: Mapping[str, str] | None = None) -> "AccessKeys":
        """Keys from `security`'s files and the T2I_API_KEYS / T2I_ADMIN_KEYS variables.
        Raises ConfigError naming the field or variable for an unreadable or empty file."""
        environ = os.environ if environ is None else environ
        api = parse_keys(environ.get(API_KEYS_ENV, ""), API_KEYS_ENV, ",")
        admin = parse_keys(environ.get(ADMIN_KEYS_ENV, ""), ADMIN_KEYS_ENV, ",")
        if security.api_keys_file:
            api += _read_file(security.api_keys_file, "security.api_keys_file")
        if security.admin_keys_file:
            admin += _read_file(security.admin_keys_file, "security.admin_keys_file")
        return cls.from_keys(api, admin)

    @property
    def enabled(self) -> bool:
        return bool(self.api or self.admin)

    def check(self, path: str, authorization: str | None) -> Denial | None:
        """None when a request to `path` with this Authorization header may proceed."""
        if not path.startswith(PROTECTED_PREFIX):
            return None  # /healthz, /readyz, /docs, /openapi.json
        admin_route = path.rstrip("/") in ADMIN_PATHS
        if not (self.api or (admin_route and self.admin)):
            return None
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Denial(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                          "invalid_api_key")
        presented = _digest(token.strip())
        is_admin = _matches(presented, self.admin)
        if not (is_admin or _matches(presented, self.api)):
            return Denial(401, "invalid API key", "invalid_api_key")
        if admin_route and self.admin and not is_admin:
            return Denial(403, f"{path.rstrip('/')} needs an admin key; this API key is not one",
                          "permission_error")
        return None


def access_summary(host: str, keys: AccessKeys) -> str:
    """One line for `t2i serve`: who may call the API (counts only, never a key)."""
    if keys.enabled:
        return (f"t2i: API keys required on /v1/* ({len(keys.api)} API keys, {len(keys.admin)} "
                "admin keys); /healthz and /readyz stay open")
    if host in ("127.0.0.1", "localhost", "::1"):
        return "t2i: no API keys configured; the API is open on loopback only"
    return (f"t2i: WARNING: no API keys configured and the API listens on {host}: anyone who can "
            "reach it may generate and pin models (set security.api_keys_file or T2I_API_KEYS)")


class BearerAuthMiddleware:
    """ASGI middleware: checks every request against the keys before routing or body parsing.
    `keys` is called per request (under Serve it reads the replica's Ingress)."""

    def __init__(self, app: ASGIApp, keys: Callable[[], AccessKeys]):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):] or "/"
            denial = self.keys().check(path, Headers(scope=scope).get("authorization"))
            if denial is not None:
                await denial.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
