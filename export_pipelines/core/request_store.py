"""The `export_requests` table (README "Requesting exports"; schema in core/migrations.py): the
queue apps write to and the status they read.

Status: pending → queued → running → succeeded | failed; succeeded → expired when the janitor
removes the files; a failed row set back to pending with attempt + 1 runs again.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from export_pipelines.core.catalog import Catalog
from export_pipelines.core.errors import InvalidRequest
from export_pipelines.core.pg_store import STORE_STATEMENT_TIMEOUT, PgStore
from export_pipelines.core.request import build_request, check_notify

MAX_ERROR_CHARS = 4000


@dataclass(frozen=True)
class UnreadableJson:
    """A jsonb value PostgreSQL accepted but Python's json cannot load (a number of more than
    4300 digits, nesting deeper than the recursion limit). Loading it must not raise: one such
    row would otherwise fail every sensor tick and stop all the other rows."""

    reason: str


def _load_json(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        return UnreadableJson(f"{type(exc).__name__}: {str(exc)[:200]}")


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

    @property
    def run_key(self) -> str:
        return f"{self.id}:{self.attempt}"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StoredRequest:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


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
) -> None:
    """What a request must satisfy before it is queued (`export-pipelines request`) and again before
    it is launched (the request sensor: apps may write rows directly). Checks nothing that needs
    the source database; raises Rejected naming the field."""
    if isinstance(filters, UnreadableJson):
        raise InvalidRequest("filters", f"is not JSON this service can read ({filters.reason})")
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
    check_notify(webhook_url, email, webhook_allowlist)


def is_request_id(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


class RequestStore(PgStore):
    """Every read and write of export_requests, on the store's one connection; each method is one
    short transaction."""

    def _open(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.conninfo, autocommit=True, row_factory=dict_row, options=STORE_STATEMENT_TIMEOUT
        )
        set_json_loads(_load_json, conn)
        return conn

    def create(
        self,
        *,
        tenant_id: str,
        resource: str,
        format: str = "csv",
        compression: str | None = None,
        filters: dict[str, Any] | None = None,
        columns: list[str] | None = None,
        webhook_url: str | None = None,
        email: str | None = None,
    ) -> str:
        row = self.execute(
            """
                INSERT INTO export_requests
                    (id, tenant_id, resource, format, compression, filters, columns, webhook_url, email)
                VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s) RETURNING id
                """,
            [
                uuid.uuid4(),
                tenant_id,
                resource,
                format,
                compression,
                json.dumps(filters or {}),
                columns,
                webhook_url,
                email,
            ],
        ).fetchone()
        assert row is not None
        return str(row["id"])

    def get(self, request_id: str) -> StoredRequest | None:
        if not is_request_id(request_id):
            return None
        row = self.execute("SELECT * FROM export_requests WHERE id = %s", [request_id]).fetchone()
        return StoredRequest.from_row(_stringify_id(row)) if row else None

    def to_launch(self, limit: int = 50, requeue_after_seconds: int = 120) -> list[StoredRequest]:
        """Pending rows, plus queued rows whose run never started (a tick that died after
        marking them); re-requesting those is safe because run keys are deduplicated."""
        rows = self.execute(
            """
                SELECT * FROM export_requests
                WHERE status = 'pending'
                   OR (status = 'queued' AND run_id IS NULL
                       AND queued_at < now() - make_interval(secs => %s))
                ORDER BY created_at, id
                LIMIT %s
                """,
            [requeue_after_seconds, limit],
        ).fetchall()
        return [StoredRequest.from_row(_stringify_id(r)) for r in rows]

    def _update(self, request_id: str, sql: str, params: list[Any], only_if: tuple[str, ...] = ()) -> bool:
        if not is_request_id(request_id):
            return False  # an ad-hoc run's request_id that names no row: nothing to update
        guard = " AND status = ANY(%s)" if only_if else ""
        cur = self.execute(
            f"UPDATE export_requests SET {sql}, updated_at = now() WHERE id = %s{guard}",
            [*params, request_id, *([list(only_if)] if only_if else [])],
        )
        return cur.rowcount == 1

    def mark_queued(self, request_id: str, attempt: int) -> bool:
        cur = self.execute(
            """
                UPDATE export_requests SET status = 'queued', queued_at = now(), error = NULL,
                       updated_at = now()
                WHERE id = %s AND attempt = %s AND status IN ('pending', 'queued')
                """,
            [request_id, attempt],
        )
        return cur.rowcount == 1

    def mark_invalid(self, request_id: str, attempt: int, error: str) -> bool:
        cur = self.execute(
            """
                UPDATE export_requests SET status = 'failed', error = %s, completed_at = now(),
                       updated_at = now()
                WHERE id = %s AND attempt = %s AND status = 'pending'
                """,
            [error[:MAX_ERROR_CHARS], request_id, attempt],
        )
        return cur.rowcount == 1

    def mark_running(self, request_id: str, run_id: str, rows_total: int) -> bool:
        return self._update(
            request_id,
            "status = 'running', run_id = %s, rows_total = %s, rows_exported = 0, bytes_written = 0, "
            "started_at = coalesce(started_at, now()), error = NULL",
            [run_id, rows_total],
            only_if=("pending", "queued", "running", "failed"),
        )

    def update_progress(self, request_id: str, rows_exported: int, bytes_written: int) -> bool:
        return self._update(
            request_id,
            "rows_exported = %s, bytes_written = %s",
            [rows_exported, bytes_written],
            only_if=("running",),
        )

    def mark_succeeded(
        self,
        request_id: str,
        *,
        rows: int,
        bytes_written: int,
        manifest_key: str,
        download_url: str,
        expires_at: datetime,
    ) -> bool:
        return self._update(
            request_id,
            "status = 'succeeded', rows_exported = %s, bytes_written = %s, manifest_key = %s, "
            "download_url = %s, expires_at = %s, completed_at = now(), error = NULL",
            [rows, bytes_written, manifest_key, download_url, expires_at],
        )

    def mark_failed(self, request_id: str, error: str) -> bool:
        return self._update(
            request_id,
            "status = 'failed', error = %s, completed_at = now()",
            [error[:MAX_ERROR_CHARS]],
            only_if=("pending", "queued", "running"),
        )

    def note_error(self, request_id: str, error: str) -> bool:
        """An attempt failed but will be retried: say so without leaving `running`."""
        return self._update(
            request_id, "error = %s", [error[:MAX_ERROR_CHARS]], only_if=("running", "queued")
        )

    def record_notification(self, request_id: str, error: str | None) -> bool:
        return self._update(request_id, "notified_at = now(), notify_error = %s", [error])

    def refresh_link(self, request_id: str, download_url: str, expires_at: datetime) -> bool:
        return self._update(
            request_id,
            "download_url = %s, expires_at = %s",
            [download_url, expires_at],
            only_if=("succeeded",),
        )

    def expired(self, limit: int = 500) -> list[StoredRequest]:
        rows = self.execute(
            "SELECT * FROM export_requests WHERE status = 'succeeded' AND expires_at < now() "
            "ORDER BY expires_at LIMIT %s",
            [limit],
        ).fetchall()
        return [StoredRequest.from_row(_stringify_id(r)) for r in rows]

    def mark_expired(self, request_id: str) -> bool:
        return self._update(request_id, "status = 'expired', download_url = NULL", [], only_if=("succeeded",))


def _stringify_id(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "id": str(row["id"])}
