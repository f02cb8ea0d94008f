"""One row of `export_requests` as the service reads it, and the rules about rows that need no
database: field checks before a row is queued or launched, the folder a row's export is written
to, the id of a monthly partition's row. The stores of the table are request_store.py (writes),
feed_deliveries.py (a feed's deliveries), queue.py (the fair queue) and request_reads.py (a tenant's
reads)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from export_pipelines.core.errors import InvalidRequest
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.core.requests.request import build_request, check_notify
from export_pipelines.core.storage.layout import ExportLocation
from export_pipelines.core.storage.migrations.request_table import MAX_FILTERS_BYTES


@dataclass(frozen=True)
class UnreadableJson:
    """A jsonb value PostgreSQL accepted but Python's json cannot load (a number of more than
    4300 digits, nesting deeper than the recursion limit). Loading it must not raise: one such
    row would otherwise fail every sensor tick and stop all the other rows."""

    reason: str


def load_json(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        return UnreadableJson(f"{type(exc).__name__}: {str(exc)[:200]}")


@dataclass(frozen=True)
class OversizedFilters:
    """Stands in for a `filters` value over MAX_FILTERS_BYTES: the sensor never loads such a value
    (one 50 MB row per tenant would take the shared code server's memory)."""

    size: int


@dataclass(frozen=True)
class StoredRequest:
    """One row of export_requests, as read (fields are raw: validation happens elsewhere)."""

    id: str
    tenant_id: str
    resource: str
    format: str
    compression: str | None
    filters: Any
    columns: list[str] | None
    webhook_url: str | None
    email: str | None
    status: str
    attempt: int
    rows_total: int | None
    rows_exported: int
    bytes_written: int
    run_id: str | None
    manifest_key: str | None
    download_url: str | None
    expires_at: datetime | None
    error: str | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    error_code: str | None = None
    # Written by the export API only (core/requests/api_keys.py's columns): the run takes them from the row.
    link_expiry_hours: int | None = None
    max_rows_per_file: int | None = None
    cancel_requested_at: datetime | None = None
    # A monthly partition's row (origin 'monthly') names its folder by month; others by their id.
    export_id: str | None = None
    origin: str = "request"
    updated_at: datetime | None = None
    # A feed's delivery (docs/feeds.md): its feed, its number, and what the next one starts from.
    feed_id: str | None = None
    sequence: int | None = None
    feed_full_refresh: bool = False
    feed_record: Any = None
    # The tenant's destination the files go to (core/delivery/destinations/); None: ours, as links.
    destination_id: Any = None

    @property
    def folder_export_id(self) -> str:
        """The export id of this row's S3 folder: export_id (a monthly row's YYYY-MM) or the row id."""
        return self.export_id or self.id

    def location(self, prefix: str) -> ExportLocation:
        """The folder this row's export is written to: (prefix, tenant, resource, export id), the
        export id being the row's id, or a monthly row's month.

        Never a column such as `manifest_key`: apps can write rows, and a row naming another folder
        must not make the service delete or sign it. Rejected when the row cannot name a folder (a
        resource no export could have been written under)."""
        return ExportLocation(prefix, self.tenant_id, self.resource, self.folder_export_id)

    @property
    def run_key(self) -> str:
        return f"{self.id}:{self.attempt}"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StoredRequest:
        values = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        if values.get("feed_id") is not None:
            values["feed_id"] = str(values["feed_id"])
        return cls(**values)


def check_request_fields(
    catalog: Catalog,
    webhook_allowlist: tuple[str, ...],
    *,
    tenant_id: Any,
    resource: Any,
    format: Any,
    compression: Any,
    columns: Any,
    filters: Any,
    webhook_url: Any,
    email: Any,
    export_id: str | None = None,
    allow_private: bool | None = None,
) -> None:
    """What a request must satisfy before it is queued (`export-pipelines request`) and again before
    it is launched (the request sensor: apps may write rows directly). Checks nothing that needs
    the source database; raises Rejected naming the field. With `allow_private` given, the webhook's
    host is resolved and checked with the send-time rules (check_notify)."""
    if isinstance(filters, UnreadableJson):
        raise InvalidRequest("filters", f"is not JSON this service can read ({filters.reason})")
    if isinstance(filters, OversizedFilters):
        raise InvalidRequest(
            "filters", f"at most {MAX_FILTERS_BYTES} bytes of JSON text, got {filters.size} (not read)"
        )
    build_request(
        catalog,
        tenant_id=tenant_id,
        resource=resource,
        format=format,
        compression=compression,
        columns=columns,
        filters=filters,
        export_id=export_id,
    )
    check_notify(webhook_url, email, webhook_allowlist, allow_private=allow_private)


def monthly_request_id(tenant_id: str, resource: str, month: str) -> str:
    """The deterministic row id of a monthly partition's export: a re-run finds the same row."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"monthly|{tenant_id}|{resource}|{month}"))


def is_request_id(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True
