"""API keys: where `serve` takes one from, the Bearer check on every /v1 route, and the loopback rule."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from typing import Mapping

from starlette.responses import JSONResponse

from waferllm.server.protocol import error_body

ENV_VAR = "WAFERLLM_API_KEY"


class ApiKeyError(ValueError):
    """An API key that cannot be used (both sources given, unreadable file, empty or unprintable key)."""


def resolve_api_key(key: str | None, key_file: str | None, environ: Mapping[str, str]) -> str | None:
    """The key from --api-key, else --api-key-file, else $WAFERLLM_API_KEY; None when none is set."""
    if key is not None and key_file is not None:
        raise ApiKeyError("give --api-key or --api-key-file, not both")
    if key_file is not None:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ApiKeyError(f"cannot read --api-key-file {key_file}: {getattr(e, 'strerror', None) or e}") from None
        if not key:
            raise ApiKeyError(f"--api-key-file {key_file} is empty")
    elif key is None:
        key = environ.get(ENV_VAR) or None
    if key is not None and (not key or not all(33 <= ord(c) < 127 for c in key)):
        raise ApiKeyError("an API key must be non-empty printable ASCII without spaces")
    return key


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; every other host (0.0.0.0, names) counts as reachable."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """ASGI middleware: every /v1 route needs `Authorization: Bearer <key>`, else 401 (OpenAI error body)."""

    def __init__(self, app, key: str):
        self.app, self.want = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and _protected(scope.get("path", "")) and not self._ok(scope):
            body = error_body("missing or incorrect API key: send 'Authorization: Bearer <key>'",
                              "invalid_request_error", code="invalid_api_key")
            await JSONResponse(body, status_code=401, headers={"www-authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _ok(self, scope) -> bool:
        value = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        scheme, _, token = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.want)


def _protected(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")
