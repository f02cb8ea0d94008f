"""Rate limits of the API's mutating routes, per API key and per tenant (docs/security.md), with the
`limits` library: a moving window in `memory://` (one process) or in Redis (`redis://…`, shared by
several worker processes or hosts). Over a limit: 429 with Retry-After.

The cap of active exports (the database trigger) bounds what waits; these bound how fast a client may
create, cancel and delete, so create+cancel churn cannot flood the queue, the table or the targets."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from export_pipelines.api.auth import Principal
from export_pipelines.api.errors import ApiError
from export_pipelines.core.requests.api_keys import hash_token

DEFAULT_PER_KEY = "5/second;60/minute"
DEFAULT_PER_TENANT = "10/second;120/minute"
DEFAULT_STORAGE_URL = "memory://"
NAMESPACE = "export-api"
EXPIRY_SWEEP_SECONDS = 1.0
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def parse_limits(name: str, text: str) -> list[RateLimitItem]:
    """`5/second;60/minute` as limit items; ValueError naming the setting when it does not parse."""
    try:
        items = parse_many(text)
    except ValueError as exc:
        raise ValueError(f"{name}: {text!r} is not a rate like 5/second;60/minute ({exc})") from None
    if not items:
        raise ValueError(f"{name}: {text!r} names no rate")
    return items


class RateLimits:
    """Per-key and per-tenant limits, checked after the key is known and before the body is read."""

    def __init__(
        self,
        per_key: str = DEFAULT_PER_KEY,
        per_tenant: str = DEFAULT_PER_TENANT,
        storage_url: str = DEFAULT_STORAGE_URL,
    ) -> None:
        self.per_key = parse_limits("EXPORT_API_RATE_LIMIT_PER_KEY", per_key)
        self.per_tenant = parse_limits("EXPORT_API_RATE_LIMIT_PER_TENANT", per_tenant)
        # In this process's memory: a check costs no I/O, so the gate below may make it on the
        # event loop itself.
        self.in_memory = storage_url.startswith("memory://")
        storage = SweptMemoryStorage() if self.in_memory else storage_from_string(storage_url)
        self.limiter = MovingWindowRateLimiter(storage)

    def check_presented(self, token: str) -> None:
        """429 before the key is looked up when the key presented is already over its limit.

        The per-key windows are keyed by the hash of the key as presented (the hash the key table
        stores), so a client hammering past its limit costs a hash and an in-memory lookup per
        request, not a database round trip; other tenants' requests keep the server's time. A key
        that was never admitted (unknown, revoked) has no window and goes on to its 401."""
        ident = hash_token(token)
        for item in self.per_key:
            self._refuse_if_over(item, "key", ident)

    def check(self, who: Principal) -> None:
        """Count one mutating request of `who`; 429 + Retry-After when a limit is reached (then
        nothing is counted, so a refused client does not lengthen its own wait)."""
        checks = [(item, "key", hash_token(who.token)) for item in self.per_key]
        if who.tenant_id is not None:
            checks += [(item, "tenant", who.tenant_id) for item in self.per_tenant]
        for item, kind, ident in checks:
            self._refuse_if_over(item, kind, ident)
        for item, kind, ident in checks:
            self.limiter.hit(item, NAMESPACE, kind, ident)

    def _refuse_if_over(self, item: RateLimitItem, kind: str, ident: str) -> None:
        if not self.limiter.test(item, NAMESPACE, kind, ident):
            reset = self.limiter.get_window_stats(item, NAMESPACE, kind, ident).reset_time
            retry = max(1, math.ceil(reset - time.time()))
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests for this {'API key' if kind == 'key' else 'tenant'}: at most "
                f"{item}; retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )


class SweptMemoryStorage(MemoryStorage):
    """`limits`' in-memory storage, dropping expired windows once a second instead of 100 times.

    The stock storage starts a new timer thread 10 ms after any hit while requests keep coming: at a
    few hundred requests a second that is ~100 threads a second, each taking the GIL from the
    request threads. Limits are still exact: a window is judged by its entries' timestamps, and the
    sweep only frees memory."""

    def _MemoryStorage__schedule_expiry(self) -> None:  # the base class's private hook
        if not self.timer.is_alive():
            self.timer = threading.Timer(EXPIRY_SWEEP_SECONDS, self._MemoryStorage__expire_events)
            self.timer.daemon = True
            self.timer.start()


class OverLimitGate:
    """Pure ASGI, in front of the routes: a mutating request whose API key is already over its
    limit is answered 429 (the routes' own answer, Retry-After included) from memory, before
    routing, validation or a worker thread. A client hammering past its limit then costs the
    server a hash and a lookup per request, and other tenants keep the event loop. Only with the
    in-memory limiter (a Redis-backed check is a network call: the routes make it in their
    threads); the routes check again either way."""

    def __init__(self, app: Any, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http" and self.limits.in_memory and scope["method"] in MUTATING_METHODS:
            token = presented_token(scope)
            if token:
                try:
                    self.limits.check_presented(token)
                except ApiError as refused:
                    await refused.response()(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def presented_token(scope: MutableMapping[str, Any]) -> str:
    """The bearer token of the request's Authorization header, or ''."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""
