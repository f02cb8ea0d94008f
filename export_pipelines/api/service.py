"""`ExportApi`: what the routers share (settings, catalog, connection pool, S3 client) and the two
reads several of them need: one export of the caller's tenant with its status document, and the
export's files as fresh presigned links."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from export_pipelines.api.auth import Principal
from export_pipelines.api.db import ConnectionPool
from export_pipelines.api.errors import ApiError, not_found
from export_pipelines.api.status import status_document
from export_pipelines.core.errors import Rejected
from export_pipelines.core.requests.catalog import Catalog, load_catalog
from export_pipelines.core.requests.queue import RequestQueue
from export_pipelines.core.requests.request_reads import RequestReads
from export_pipelines.core.requests.request_row import StoredRequest
from export_pipelines.core.storage.links import Link, fresh_links
from export_pipelines.core.storage.s3 import make_s3_client
from export_pipelines.settings import Settings

DEFAULT_LINK_HOURS = 24


class Loaded(NamedTuple):
    """One export of the caller's tenant: its row and its status document."""

    row: StoredRequest
    doc: dict[str, Any]


class ExportApi:
    """The handlers' shared state: settings, catalog, pool, S3 client."""

    def __init__(self, settings: Settings, pool: ConnectionPool | None = None) -> None:
        self.settings = settings
        self.catalog: Catalog = load_catalog(settings.catalog_path)
        self.pool = pool or ConnectionPool(settings.require_source_database_url())
        self._s3: Any = None

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = make_s3_client(**self.settings.s3_client_options())
        return self._s3

    @property
    def bucket(self) -> str:
        return self.settings.require_bucket()

    # -- reads --

    def load(self, principal: Principal, export_id: str, *, position: bool = True) -> Loaded:
        """The export of the caller's tenant (404 for another tenant's, as for none), with its queue
        position while it waits."""
        with self.pool.connection() as conn:
            principal.resolve(conn)
            row = RequestReads.on(conn).one(export_id, principal.tenant_id)
            if row is None:
                raise not_found()
            queue_position = None
            if position and row.status in ("pending", "queued"):
                queue_position = RequestQueue.on(conn).position(row.id)
        return Loaded(row, status_document(row, queue_position))

    def links(self, row: StoredRequest) -> list[Link]:
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
            return fresh_links(self.s3, self.bucket, row.location(self.settings.prefix), hours)
        except Rejected as exc:
            raise ApiError(410, "export_expired", str(exc)) from exc
