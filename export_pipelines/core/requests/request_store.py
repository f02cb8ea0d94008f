"""The `export_requests` table (README "Requesting exports"; schema in core/storage/migrations.py): the
queue apps write to and the status they read.

Status: pending → queued → running → succeeded | failed | canceled; succeeded → expired when the
janitor removes the files; a failed row set back to pending with attempt + 1 runs again.

What tenants read of a failure is `error_code` (core.errors.ERROR_CODES) and a short `error`
(core.errors.tenant_message); the full error stays in the Dagster run.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import psycopg
import psycopg.errors
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from export_pipelines.core.errors import ERROR_CODES, InvalidRequest
from export_pipelines.core.requests.request_row import (
    OversizedFilters,
    StoredRequest,
    _load_json,
    is_request_id,
    monthly_request_id,
)
from export_pipelines.core.storage.migrations import (
    MAX_COLUMNS,
    MAX_EMAIL_CHARS,
    MAX_FILTERS_BYTES,
    MAX_TENANT_ID_CHARS,
    MAX_WEBHOOK_URL_CHARS,
    TENANT_CAP_SQLSTATE,
    set_tenant_max_active,
)
from export_pipelines.core.storage.pg_connect import open_connection
from export_pipelines.core.storage.pg_store import STORE_STATEMENT_TIMEOUT, PgStore

MAX_ERROR_CHARS = 4000
ACTIVE = ("pending", "queued", "running")
DEFAULT_STARTS_PER_MINUTE = 10


class RequestStore(PgStore):
    """Every read and write of export_requests, on the store's one connection; each method is one
    short transaction."""

    def _open(self) -> psycopg.Connection[Any]:
        conn = open_connection(
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
        idempotency_key: str | None = None,
    ) -> str:
        """Insert a pending request and return its id (the existing row's id when the tenant
        already sent this idempotency key). Raises InvalidRequest when the database refuses it:
        the tenant's cap of active requests (SQLSTATE EX429) or a size limit (a CHECK)."""
        try:
            row = self.execute(
                """
                    INSERT INTO export_requests (id, tenant_id, resource, format, compression, filters,
                                                 columns, webhook_url, email, idempotency_key)
                    VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s)
                    ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL
                    DO NOTHING
                    RETURNING id
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
                    idempotency_key,
                ],
            ).fetchone()
        except psycopg.Error as exc:
            raise refusal(exc) from exc
        if row is None:  # the idempotency key was used before: the same request
            row = self.execute(
                "SELECT id FROM export_requests WHERE tenant_id = %s AND idempotency_key = %s",
                [tenant_id, idempotency_key],
            ).fetchone()
        assert row is not None
        return str(row["id"])

    def upsert_monthly(
        self,
        *,
        tenant_id: str,
        resource: str,
        month: str,
        format: str,
        compression: str | None,
        filters: dict[str, Any],
        columns: list[str] | None,
        run_id: str,
    ) -> str:
        """The request row of a monthly partition (origin 'monthly', export_id YYYY-MM), created by
        its first run and taken over by every re-run (UI re-execution, backfill): one row per
        (tenant, resource, month). A re-run of a finished row counts as a new attempt. The tenant's
        cap neither refuses nor counts these rows (the trigger skips origin 'monthly')."""
        request_id = monthly_request_id(tenant_id, resource, month)
        self.execute(
            """
                INSERT INTO export_requests (id, tenant_id, resource, format, compression, filters,
                                             columns, status, run_id, origin, export_id,
                                             queued_at, started_at)
                VALUES (%(id)s, %(tenant)s, %(resource)s, %(format)s, %(compression)s,
                        %(filters)s::jsonb, %(columns)s, 'running', %(run_id)s, 'monthly',
                        %(month)s, now(), now())
                ON CONFLICT (id) DO UPDATE SET
                    format = excluded.format, compression = excluded.compression,
                    filters = excluded.filters, columns = excluded.columns,
                    attempt = export_requests.attempt
                        + CASE WHEN export_requests.status IN ('pending', 'queued', 'running')
                               THEN 0 ELSE 1 END,
                    status = 'running', run_id = excluded.run_id, error = NULL, error_code = NULL,
                    rows_exported = 0, bytes_written = 0, manifest_key = NULL,
                    download_url = NULL, expires_at = NULL, completed_at = NULL,
                    cancel_requested_at = NULL, started_at = now(), updated_at = now()
                """,
            {
                "id": request_id,
                "tenant": tenant_id,
                "resource": resource,
                "format": format,
                "compression": compression,
                "filters": json.dumps(filters),
                "columns": columns,
                "run_id": run_id,
                "month": month,
            },
        )
        return request_id

    def set_tenant_max_active(self, value: int) -> None:
        """Store EXPORT_TENANT_MAX_ACTIVE where the insert trigger reads it."""
        set_tenant_max_active(self.conn, value)

    def get(self, request_id: str) -> StoredRequest | None:
        if not is_request_id(request_id):
            return None
        row = self.execute("SELECT * FROM export_requests WHERE id = %s", [request_id]).fetchone()
        return StoredRequest.from_row(_stringify_id(row)) if row else None

    def to_launch(
        self,
        limit: int = 50,
        requeue_after_seconds: int = 120,
        starts_per_minute: int = DEFAULT_STARTS_PER_MINUTE,
    ) -> list[StoredRequest]:
        """Pending rows, plus queued rows whose run never started (a tick that died after
        marking them; re-requesting those is safe because run keys are deduplicated).

        Fair across tenants: rows are taken round-robin, every tenant's oldest row first, then
        every tenant's second, so one tenant's backlog never delays another tenant's first request
        beyond this tick. At most `starts_per_minute` rows per tenant are started (queued) per
        minute: the rest wait, in the same order. A `filters` value over MAX_FILTERS_BYTES is not
        read: it comes back as OversizedFilters (the sensor fails the row)."""
        columns = ", ".join(f"r.{c}" for c in StoredRequest.__dataclass_fields__ if c != "filters")
        rows = self.execute(
            f"""
                WITH candidates AS (
                    SELECT id, tenant_id, created_at,
                           row_number() OVER (PARTITION BY tenant_id ORDER BY created_at, id) AS turn
                    FROM export_requests
                    WHERE status = 'pending'
                       OR (status = 'queued' AND run_id IS NULL
                           AND queued_at < now() - make_interval(secs => %(requeue)s))
                ), started AS (
                    SELECT tenant_id, count(*) AS n FROM export_requests
                    WHERE queued_at >= now() - interval '1 minute'
                      AND tenant_id IN (SELECT tenant_id FROM candidates)
                    GROUP BY tenant_id
                )
                SELECT {columns}, octet_length(r.filters::text) AS filters_bytes,
                       CASE WHEN octet_length(r.filters::text) <= %(max_filters)s
                            THEN r.filters END AS filters
                FROM candidates c
                JOIN export_requests r ON r.id = c.id
                LEFT JOIN started s ON s.tenant_id = c.tenant_id
                WHERE c.turn <= %(per_minute)s - coalesce(s.n, 0)
                ORDER BY c.turn, c.created_at, c.id
                LIMIT %(limit)s
                """,
            {
                "requeue": requeue_after_seconds,
                "max_filters": MAX_FILTERS_BYTES,
                "per_minute": starts_per_minute,
                "limit": limit,
            },
        ).fetchall()
        out = []
        for r in rows:
            if r["filters"] is None and r["filters_bytes"] is not None:
                r = {**r, "filters": OversizedFilters(r["filters_bytes"])}
            out.append(StoredRequest.from_row(_stringify_id(r)))
        return out

    def unfinished(self, limit: int = 200, older_than_seconds: int = 0) -> list[StoredRequest]:
        """Queued and running rows not touched for `older_than_seconds`, oldest first: what the
        reaper checks against the runs Dagster still has."""
        rows = self.execute(
            """
                SELECT * FROM export_requests
                WHERE status IN ('queued', 'running')
                  AND updated_at < now() - make_interval(secs => %s)
                ORDER BY updated_at, id
                LIMIT %s
                """,
            [older_than_seconds, limit],
        ).fetchall()
        return [StoredRequest.from_row(_stringify_id(r)) for r in rows]

    def cancel_requested(self, limit: int = 200) -> list[StoredRequest]:
        """Queued and running rows someone asked to cancel (the API's POST …/cancel), oldest first."""
        rows = self.execute(
            """
                SELECT * FROM export_requests
                WHERE cancel_requested_at IS NOT NULL AND status IN ('queued', 'running')
                ORDER BY cancel_requested_at, id
                LIMIT %s
                """,
            [limit],
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
                       error_code = NULL, updated_at = now()
                WHERE id = %s AND attempt = %s AND status IN ('pending', 'queued')
                """,
            [request_id, attempt],
        )
        return cur.rowcount == 1

    def claim(self, row: StoredRequest) -> bool:
        """Mark a row `to_launch` returned as queued, only if nobody else did since it was read
        (same status, same queued_at): the request sensor and the request submitter may read the
        same pending row at once, and only the one that claims it may start its run."""
        cur = self.execute(
            """
                UPDATE export_requests SET status = 'queued', queued_at = now(), error = NULL,
                       error_code = NULL, updated_at = now()
                WHERE id = %s AND attempt = %s AND status = %s
                  AND queued_at IS NOT DISTINCT FROM %s
                """,
            [row.id, row.attempt, row.status, row.queued_at],
        )
        return cur.rowcount == 1

    def mark_invalid(self, request_id: str, attempt: int, error: str) -> bool:
        """Fail a row the sensor refused (pending, or queued and picked again): it is never picked
        again. `error` names the field and what is allowed."""
        cur = self.execute(
            """
                UPDATE export_requests SET status = 'failed', error = %s,
                       error_code = 'invalid_request', completed_at = now(), updated_at = now()
                WHERE id = %s AND attempt = %s AND status IN ('pending', 'queued')
                """,
            [error[:MAX_ERROR_CHARS], request_id, attempt],
        )
        return cur.rowcount == 1

    def mark_running(self, request_id: str, run_id: str, rows_total: int) -> bool:
        return self._update(
            request_id,
            "status = 'running', run_id = %s, rows_total = %s, rows_exported = 0, bytes_written = 0, "
            "started_at = coalesce(started_at, now()), error = NULL, error_code = NULL",
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
            "download_url = %s, expires_at = %s, completed_at = now(), error = NULL, error_code = NULL",
            [rows, bytes_written, manifest_key, download_url, expires_at],
            only_if=("running",),  # only a row count_rows accepted (and marked running)
        )

    def mark_failed(self, request_id: str, error: str, code: str = "internal") -> bool:
        """Fail an active row. `error` is what the tenant reads: a short stable message (see
        core.errors.tenant_message), never a stack, a key or a host."""
        return self._update(
            request_id,
            "status = 'failed', error = %s, error_code = %s, completed_at = now()",
            [error[:MAX_ERROR_CHARS], _known_code(code)],
            only_if=ACTIVE,
        )

    def mark_canceled(self, request_id: str, error: str = "the export was canceled") -> bool:
        """An active row whose run was canceled."""
        return self._update(
            request_id,
            "status = 'canceled', error = %s, error_code = 'canceled', completed_at = now()",
            [error[:MAX_ERROR_CHARS]],
            only_if=ACTIVE,
        )

    def note_error(self, request_id: str, error: str, code: str = "internal") -> bool:
        """An attempt failed but will be retried: say so without leaving `running`."""
        return self._update(
            request_id,
            "error = %s, error_code = %s",
            [error[:MAX_ERROR_CHARS], _known_code(code)],
            only_if=("running", "queued"),
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


def refusal(exc: psycopg.Error) -> Exception:
    """What an insert refused by the database means for the requester; other errors unchanged."""
    diag = exc.diag
    if exc.sqlstate == TENANT_CAP_SQLSTATE:
        return InvalidRequest("tenant_id", diag.message_primary or "too many active export requests")
    if isinstance(exc, psycopg.errors.CheckViolation):
        return InvalidRequest(
            "request",
            f"refused by the database constraint {diag.constraint_name}: filters at most "
            f"{MAX_FILTERS_BYTES} bytes, columns at most {MAX_COLUMNS} names, webhook_url at most "
            f"{MAX_WEBHOOK_URL_CHARS} and email at most {MAX_EMAIL_CHARS} characters, tenant_id at "
            f"most {MAX_TENANT_ID_CHARS} characters",
        )
    return exc


def _known_code(code: str) -> str:
    return code if code in ERROR_CODES else "internal"


def _stringify_id(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "id": str(row["id"])}
