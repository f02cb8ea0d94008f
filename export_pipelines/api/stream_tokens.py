"""Short-lived, signed event-stream tokens: how a browser's `EventSource` authenticates.

`EventSource` cannot send an `Authorization` header, and an API key in a URL would end up in
browser history, proxy logs and `Referer` headers for as long as the key lives. So the page asks
`POST /v1/exports/{id}/events/token` (with its bearer key) for a token that opens that one
export's stream, as `GET /v1/exports/{id}/events?access_token=…`, for TOKEN_SECONDS:

    est_<base64url JSON [key id, tenant scope, export id, expiry unix seconds]>.<hex HMAC-SHA256>

The HMAC key is the server's secret (EXPORT_API_TOKEN_SECRET, or a random one per process), which
nothing in the database reveals. The server bounds the expiry (a token claiming to live longer than
TOKEN_SECONDS from now is refused, whoever signed it), and the key must still be live when the token
is used and on every poll of the open stream: revoking the key (`export-pipelines api-key revoke`)
voids its tokens and ends its open streams. The tenant scope is the key's tenant (or, for an
operator key, the tenant it acted for), so a token never reaches further than the key that asked for
it, and only for the export it names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import psycopg
from fastapi import Request

from export_pipelines.api.auth import Principal
from export_pipelines.api.errors import ApiError, not_found
from export_pipelines.core.errors import ConfigurationError
from export_pipelines.core.requests.api_keys import ApiKeyStore

TOKEN_PREFIX = "est_"
# Long enough to open the stream (and for EventSource's own reconnects after a dropped
# connection); an open stream is not cut when its token expires, only when its key is revoked.
TOKEN_SECONDS = 300
# Clock skew between API workers tolerated on a token's expiry.
SKEW_SECONDS = 5
MAX_TOKEN_CHARS = 1024
MIN_SECRET_CHARS = 32


def token_secret(configured: str | None, workers: int = 1) -> bytes:
    """The signing key: EXPORT_API_TOKEN_SECRET; unset, a random one for this process, which only
    works when one process answers every request."""
    if configured:
        if len(configured) < MIN_SECRET_CHARS:
            raise ConfigurationError(
                f"EXPORT_API_TOKEN_SECRET: at least {MIN_SECRET_CHARS} characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return hashlib.sha256(b"export-pipelines event-stream token\n" + configured.encode()).digest()
    if workers > 1:
        raise ConfigurationError(
            "EXPORT_API_TOKEN_SECRET is required with more than one worker: a token minted by one "
            "worker must verify in the others"
        )
    return secrets.token_bytes(32)


def _signature(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def mint(principal: Principal, export_id: str, secret: bytes, now: float | None = None) -> tuple[str, int]:
    """A token for `export_id`'s stream, for the principal's key: (token, expiry unix time)."""
    expires = int((now if now is not None else time.time()) + TOKEN_SECONDS)
    claims = [principal.key.id, principal.tenant_id, export_id, expires]
    payload = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode()
    payload = payload.rstrip("=")
    return f"{TOKEN_PREFIX}{payload}.{_signature(secret, payload)}", expires


def _invalid(reason: str) -> ApiError:
    return ApiError(
        401,
        "unauthenticated",
        f"access_token: {reason}; get a fresh one from POST /v1/exports/{{id}}/events/token",
        "access_token",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _claims(token: str) -> tuple[int, str | None, str, int, str, str]:
    """The token's claims, payload and signature, checked for shape only (not yet for the key)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
        raise _invalid("not an event-stream token")
    payload, _, signature = token[len(TOKEN_PREFIX) :].partition(".")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        key_id, scope, export_id, expires = json.loads(raw)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise _invalid("not an event-stream token") from None
    if (
        type(key_id) is not int
        or not (scope is None or isinstance(scope, str))
        or not isinstance(export_id, str)
        or type(expires) is not int
    ):
        raise _invalid("not an event-stream token")
    return key_id, scope, export_id, expires, payload, signature


class TokenPrincipal(Principal):
    """The caller of one event stream, authenticated by a token from `mint` instead of a key."""

    def __init__(self, request: Request, access_token: str, export_id: str, secret: bytes) -> None:
        super().__init__(request, "", None)
        self.access_token = access_token
        self.export_id = export_id
        self.secret = secret

    def resolve(self, conn: psycopg.Connection[Any]) -> Principal:
        if self.resolved:
            return self
        key_id, scope, export_id, expires, payload, signature = _claims(self.access_token)
        if not hmac.compare_digest(_signature(self.secret, payload), signature):
            raise _invalid("not valid (wrong signature)")
        now = time.time()
        if expires < now:
            raise _invalid("expired")
        if expires > now + TOKEN_SECONDS + SKEW_SECONDS:
            raise _invalid(f"expiry further than {TOKEN_SECONDS} s away")
        if export_id != self.export_id:
            # A token opens only the stream it was made for; any other export does not exist for it.
            raise not_found()
        live = ApiKeyStore.on(conn).live(key_id)
        if live is None:
            raise _invalid("not valid (the key was revoked)")
        key = live[0]
        if not key.is_operator and scope != key.tenant_id:
            raise _invalid("not valid (wrong tenant)")
        return self.authenticated(key, scope)
