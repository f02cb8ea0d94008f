"""`ExportApi`: what the routers share (settings, catalog, connection pool, S3 client, rate limits,
the event-stream token secret) and the two reads several of them need: one export of the caller's
tenant with its status document, and the export's files as fresh presigned links.

S3 calls go through `storage()`: short timeouts, and at most `api_s3_max_concurrent` at once, so a
hanging S3 slows the file routes only; the rest of the API (and /healthz) keeps its threads."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple

from export_pipelines.api.auth import Principal
from export_pipelines.api.db import ConnectionPool
from export_pipelines.api.doorbell import PendingDoorbell
from export_pipelines.api.errors import ApiError, not_found
from export_pipelines.api.rate_limits import RateLimits
from export_pipelines.api.status import status_document
from export_pipelines.api.stream_tokens import token_secret
from export_pipelines.core.errors import Rejected
from export_pipelines.core.requests.api_keys import hash_token
from export_pipelines.core.requests.catalog import Catalog, load_catalog
from export_pipelines.core.requests.queue import RequestQueue
from export_pipelines.core.requests.request_reads import RequestReads
from export_pipelines.core.requests.request_row import StoredRequest
from export_pipelines.core.storage.links import Link, fresh_link_page
from export_pipelines.core.storage.s3 import make_s3_client
from export_pipelines.settings import Settings

DEFAULT_LINK_HOURS = 24
# How long a request waits for one of the S3 slots before it answers 503: short, so requests piling
# up behind a hanging S3 give their threads back quickly.
S3_SLOT_WAIT_SECONDS = 1.0
# Queue positions are read for every waiting row at most this often and shared by all status reads.
POSITIONS_SECONDS = 1.0
# Keys (by hash) this process admitted lately, newest last: at most this many are remembered.
RECENT_KEYS = 10_000


class Loaded(NamedTuple):
    """One export of the caller's tenant: its row and its status document."""

    row: StoredRequest
    doc: dict[str, Any]


class ExportApi:
    """The handlers' shared state: settings, catalog, pool, S3 client."""

    def __init__(self, settings: Settings, pool: ConnectionPool | None = None, workers: int = 1) -> None:
        self.settings = settings
        self.catalog: Catalog = load_catalog(settings.catalog_path)
        self.pool = pool or ConnectionPool(
            settings.require_source_database_url(), max_size=settings.api_db_max_concurrent
        )
        self.doorbell = PendingDoorbell(self.pool)
        self.token_secret = token_secret(settings.api_token_secret, workers)
        self.rate_limits = RateLimits(
            settings.api_rate_limit_per_key,
            settings.api_rate_limit_per_tenant,
            settings.api_rate_limit_storage_url,
        )
        self._positions: dict[str, int] = {}
        self._positions_at = -POSITIONS_SECONDS
        self._positions_lock = threading.Lock()
        self._s3: Any = None
        self._s3_slots = threading.BoundedSemaphore(settings.api_s3_max_concurrent)
        self._recent_keys: OrderedDict[str, None] = OrderedDict()
        self._recent_lock = threading.Lock()

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            timeout = self.settings.api_s3_timeout_seconds
            self._s3 = make_s3_client(
                **self.settings.s3_client_options(),
                max_attempts=2,
                read_timeout=timeout,
                connect_timeout=timeout,
                max_pool_connections=self.settings.api_s3_max_concurrent,
            )
        return self._s3

    @contextmanager
    def storage(self) -> Iterator[Any]:
        """The S3 client, for one bounded call; 503 when every S3 slot is taken."""
        if not self._s3_slots.acquire(timeout=S3_SLOT_WAIT_SECONDS):
            raise ApiError(
                503,
                "storage_unavailable",
                "storage is slow or not reachable; retry later",
                headers={"Retry-After": "5"},
            )
        try:
            yield self.s3
        finally:
            self._s3_slots.release()

    @property
    def bucket(self) -> str:
        return self.settings.require_bucket()

    def admit(self, principal: Principal) -> None:
        """Before a mutating route reads its body: the key over its rate limit (429, no database
        call), the key itself (401), then the key's and tenant's limits (429), counted."""
        self.rate_limits.check_presented(principal.token)
        with self.pool.connection() as conn:
            self.admit_on(conn, principal)

    def admit_on(self, conn: Any, principal: Principal) -> None:
        """`admit` on a connection the caller holds (its first check aside)."""
        principal.resolve(conn)
        self.rate_limits.check(principal)
        with self._recent_lock:
            key = hash_token(principal.token)
            self._recent_keys[key] = None
            self._recent_keys.move_to_end(key)
            if len(self._recent_keys) > RECENT_KEYS:
                self._recent_keys.popitem(last=False)

    def recently_admitted(self, token: str) -> bool:
        """True when this process admitted `token` lately: a route may then read its (size-bounded)
        body before the key's database check, which it still makes before any write. A key nobody
        here has seen, or a garbage one, is still checked before its body is read."""
        with self._recent_lock:
            return hash_token(token) in self._recent_keys

    # -- reads --

    def load(
        self, principal: Principal, export_id: str, *, position: bool = True, recheck: bool = False
    ) -> Loaded:
        """The export of the caller's tenant (404 for another tenant's, as for none), with its queue
        position while it waits. `recheck`: the key must still be live (an open event stream asks on
        every poll, so revoking a key ends its streams)."""
        with self.pool.connection() as conn:
            if recheck and principal.resolved:
                principal.still_live(conn)
            principal.resolve(conn)
            row = RequestReads.on(conn).one(export_id, principal.tenant_id)
            if row is None:
                raise not_found()
            queue_position = None
            if position and row.status in ("pending", "queued"):
                queue_position = self._position(conn, row.id)
        return Loaded(row, status_document(row, queue_position))

    def _position(self, conn: Any, request_id: str) -> int | None:
        """The row's queue position from the shared snapshot (refreshed at most once a second by one
        request; the others use the last one); a row newer than the snapshot is counted alone."""
        now = time.monotonic()
        if now - self._positions_at >= POSITIONS_SECONDS and self._positions_lock.acquire(blocking=False):
            try:
                self._positions = RequestQueue.on(conn).positions()
                self._positions_at = time.monotonic()
            finally:
                self._positions_lock.release()
        known = self._positions.get(str(request_id))
        return known if known is not None else RequestQueue.on(conn).position(request_id)

    def links(self, row: StoredRequest, first: int = 1, limit: int | None = None) -> tuple[list[Link], int]:
        """Fresh links of files `first` … `first + limit - 1` (and the manifest's), and the number of
        files; 409 before the export succeeded, 410 once its files are gone."""
        status = row.status
        if status == "expired":
            raise ApiError(410, "export_expired", "the export's files were deleted (status expired)")
        if status != "succeeded":
            raise ApiError(
                409, "export_not_ready", f"the export is {status}; files exist once it has succeeded"
            )
        hours: float = row.link_expiry_hours or DEFAULT_LINK_HOURS
        if row.expires_at is not None:
            left = (row.expires_at - datetime.now(UTC)).total_seconds() / 3600
            if left <= 1 / 60:
                raise ApiError(410, "export_expired", "the export's files have expired")
            hours = min(hours, left)
        try:
            with self.storage() as s3:
                return fresh_link_page(
                    s3, self.bucket, row.location(self.settings.prefix), hours, first=first, limit=limit
                )
        except Rejected as exc:
            raise ApiError(410, "export_expired", str(exc)) from exc
