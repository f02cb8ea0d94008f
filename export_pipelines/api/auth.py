"""Who is calling: bearer API keys (a tenant key, or an operator key acting for a tenant), the
tenant scope every handler applies, and the one request-log line that names the key and, for
operator keys, the tenant they acted for (docs/api.md).

(No `from __future__ import annotations`: FastAPI resolves the dependency's annotations.)"""

import json
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Header, Query, Request

from export_pipelines.api.errors import ApiError, not_found
from export_pipelines.core.requests.api_keys import ApiKey, ApiKeyStore

log = logging.getLogger("export_pipelines.api")


class Principal:
    """Who is calling: a tenant key (scope = its tenant) or an operator key (scope = the tenant it
    acts for, or None: every tenant).

    The key is looked up by `resolve`, on the connection the handler borrows anyway, so a request
    costs one pool checkout and one thread hop, not two."""

    def __init__(self, request: Request, token: str, acting_for: str | None) -> None:
        self.request = request
        self.token = token
        self.acting_for = acting_for
        self._key: ApiKey | None = None

    def resolve(self, conn: psycopg.Connection[Any]) -> "Principal":
        if self._key is None:
            key = ApiKeyStore.on(conn).authenticate(self.token)
            if key is None:
                raise ApiError(
                    401,
                    "unauthenticated",
                    "unknown or revoked API key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if self.acting_for is not None and not key.is_operator and self.acting_for != key.tenant_id:
                # A tenant key names its tenant already; another tenant's exports do not exist for it.
                raise not_found("tenant")
            self.authenticated(key)
        return self

    def authenticated(self, key: ApiKey, acting_for: str | None = None) -> "Principal":
        """Who is calling, now that `key` vouched for it (for an operator key, acting for
        `acting_for` when given); the request log names them."""
        if acting_for is not None:
            self.acting_for = acting_for
        self._key = key
        self.request.state.principal = self
        return self

    def still_live(self, conn: psycopg.Connection[Any]) -> None:
        """401 when the key this principal resolved to has been revoked since."""
        if ApiKeyStore.on(conn).live(self.key.id) is None:
            raise ApiError(
                401, "unauthenticated", "the API key was revoked", headers={"WWW-Authenticate": "Bearer"}
            )

    @property
    def resolved(self) -> bool:
        return self._key is not None

    @property
    def key(self) -> ApiKey:
        assert self._key is not None, "resolve() first"
        return self._key

    @property
    def tenant_id(self) -> str | None:
        return self.key.tenant_id if not self.key.is_operator else self.acting_for

    @property
    def operator(self) -> bool:
        return self.key.is_operator


async def principal(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    tenant_id: Annotated[
        str | None,
        Query(max_length=256, description="operator keys only: act for this tenant"),
    ] = None,
) -> Principal:
    token = ""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            token = ""
    if not token.strip():
        raise ApiError(
            401,
            "unauthenticated",
            "send Authorization: Bearer <api key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Principal(request, token.strip(), tenant_id)


Auth = Annotated[Principal, Depends(principal)]


# --- the request log ---------------------------------------------------------------------------

request_log = logging.getLogger("export_pipelines.api.requests")


class RequestLog:
    """One structured (JSON) log line per request, the operators' audit log (pure ASGI, so
    streaming responses are not buffered): method, path, status, milliseconds, the key id and
    prefix, the tenant, and whether an operator key made it. JSON escapes every control character,
    so an encoded CR/LF in a path cannot write a line of its own."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            request_log.info(
                request_line(scope, status_holder["status"], (time.perf_counter() - started) * 1000)
            )


def request_line(scope: dict[str, Any], status: int, ms: float) -> str:
    """The request log's JSON line (without the logger's own prefix)."""
    entry: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": status,
        "ms": round(ms, 1),
        "key_id": None,
        "key_prefix": None,
        "tenant": None,
        "operator": False,
    }
    principal: Principal | None = scope.get("state", {}).get("principal")
    if principal is not None:
        key = principal.key
        entry.update(
            key_id=key.id,
            key_prefix=key.key_prefix,
            tenant=principal.tenant_id,
            operator=principal.operator,
        )
        if principal.operator:
            entry["key_name"] = key.name
    # ensure_ascii: every control and non-ASCII character is written as an escape.
    return json.dumps(entry, ensure_ascii=True, separators=(",", ":"))


def configure_request_log() -> None:
    """The request log as bare JSON lines on stderr (the other loggers keep their text format)."""
    if any(getattr(h, "_export_request_log", False) for h in request_log.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._export_request_log = True  # type: ignore[attr-defined]
    request_log.addHandler(handler)
    request_log.setLevel(logging.INFO)
    request_log.propagate = False
