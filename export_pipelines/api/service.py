"""`ExportApi`: what the routers share (settings, catalog, connection pool, S3 client) and the two
reads several of them need: one export of the caller's tenant as a status document, and the
export's files as fresh presigned links."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from export_pipelines.api.auth import Principal
from export_pipelines.api.db import ConnectionPool
from export_pipelines.api.errors import ApiError, not_found
from export_pipelines.api.status import QUEUE_POSITION_SQL, status_document
from export_pipelines.core.errors import Rejected
from export_pipelines.core.requests.catalog import Catalog, load_catalog
from export_pipelines.core.requests.request_row import folder_export_id, is_request_id
from export_pipelines.core.storage.layout import ExportLocation
from export_pipelines.core.storage.links import Link, fresh_links
from export_pipelines.core.storage.s3 import make_s3_client
from export_pipelines.settings import Settings

DEFAULT_LINK_HOURS = 24


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

    def load(self, principal: Principal, export_id: str, *, position: bool = True) -> dict[str, Any]:
        with self.pool.connection() as conn:
            principal.resolve(conn)
            if not is_request_id(export_id):
                raise not_found()
            row = conn.execute(
                "SELECT * FROM export_requests WHERE id = %s AND (%s::text IS NULL OR tenant_id = %s)",
                [export_id, principal.tenant_id, principal.tenant_id],
            ).fetchone()
            if row is None:
                raise not_found()
            queue_position = None
            if position and row["status"] in ("pending", "queued"):
                got = conn.execute(QUEUE_POSITION_SQL, {"id": row["id"]}).fetchone()
                queue_position = int(got["ahead"]) if got else None
        return {"row": row, "doc": status_document(row, queue_position)}

    def links(self, row: dict[str, Any]) -> list[Link]:
        status = row["status"]
        if status == "expired":
            raise ApiError(410, "export_expired", "the export's files were deleted (status expired)")
        if status != "succeeded":
            raise ApiError(
                409, "export_not_ready", f"the export is {status}; files exist once it has succeeded"
            )
        hours: float = row.get("link_expiry_hours") or DEFAULT_LINK_HOURS
        expires_at = row.get("expires_at")
        if expires_at is not None:
            left = (expires_at - datetime.now(UTC)).total_seconds() / 3600
            if left <= 1 / 60:
                raise ApiError(410, "export_expired", "the export's files have expired")
            hours = min(hours, left)
        try:
            location = ExportLocation(
                self.settings.prefix,
                row["tenant_id"],
                row["resource"],
                folder_export_id(row.get("export_id"), row["id"]),
            )
            return fresh_links(self.s3, self.bucket, location, hours)
        except Rejected as exc:
            raise ApiError(410, "export_expired", str(exc)) from exc
