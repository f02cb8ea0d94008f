"""The writes of `export_requests` (schema in core/storage/migrations/request_table.py): a request
created with the one idempotency rule every door shares, the monthly partitions' rows, each status transition
(queued, running, succeeded, failed, canceled, expired), progress, links and the tenant's cancel.
The fair queue's reads and claims are queue.py's, a tenant's reads request_reads.py's, a feed's
deliveries (their numbered rows and records) feed_deliveries.py's (docs/requests.md).

Status: pending → queued → running → succeeded | failed | canceled; succeeded → expired when the
janitor (or the tenant's DELETE) removes the files; a failed row set back to pending with
attempt + 1 runs again. A cancel makes any active row `canceled` at once, and a trigger keeps it
so within its attempt (export_request_status_history records every transition).

What tenants read of a failure is `error_code` (core.errors.ERROR_CODES) and a short `error`
(core.errors.tenant_message); the full error stays in the Dagster run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus
from psycopg.rows import RowFactory, dict_row
from psycopg.types.json import set_json_loads

from export_pipelines.core.delivery.delivery_store import DeliveryStore
from export_pipelines.core.delivery.notices import CANCELED, ended, enqueue
from export_pipelines.core.errors import (
    ERROR_CODES,
    TENANT_MESSAGES,
    IdempotencyConflict,
    IdempotencyInFlight,
    TooManyActive,
)
from export_pipelines.core.requests.refusals import TENANT_ACTIVE_CAP, RefusalStore
from export_pipelines.core.requests.request_row import StoredRequest, is_request_id, load_json
from export_pipelines.core.requests.tenant_settings import TenantSettingsStore
from export_pipelines.core.storage.migrations.request_table import set_tenant_max_active
from export_pipelines.core.storage.pg_errors import refusal
from export_pipelines.core.storage.pg_store import PgStore

MAX_ERROR_CHARS = 4000
ACTIVE = ("pending", "queued", "running")
# What the tenant reads of an export it canceled before any run took it.
CANCELED_BEFORE_START = "canceled before it started"
# Held while a request with an idempotency key is created: the same key sent twice at once waits
# for neither, the second is told the first is in flight.
IDEMPOTENCY_LOCK = (
    "SELECT pg_try_advisory_xact_lock(hashtext('export_api_idempotency'), hashtext(%s || E'\\n' || %s)) AS ok"
)


class RequestRows(PgStore):
    """The base of export_requests' stores: dict rows whose jsonb values load without raising
    (request_row.load_json), read as StoredRequest."""

    row_factory: ClassVar[RowFactory[Any]] = dict_row

    def cursor(self) -> psycopg.Cursor[Any]:
        cur = super().cursor()
        set_json_loads(load_json, cur)
        return cur

    def fetch_one(self, query: str, params: Any) -> StoredRequest | None:
        row = self.execute(query, params).fetchone()
        return as_request(row) if row else None

    def fetch_all(self, query: str, params: Any) -> list[StoredRequest]:
        return [as_request(r) for r in self.execute(query, params).fetchall()]


def as_request(row: dict[str, Any]) -> StoredRequest:
    """A row of export_requests (uuid id) as StoredRequest (text id)."""
    return StoredRequest.from_row({**row, "id": str(row["id"])})


def request_fingerprint(tenant_id: str, body: Any) -> str:
    """What an idempotency key is bound to: the tenant and the request as sent (a JSON value)."""
    canonical = json.dumps([tenant_id, body], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Created:
    """The row of a created request; `replayed` when the idempotency key named an earlier one."""

    row: StoredRequest
    replayed: bool


INSERT_REQUEST = """
    INSERT INTO export_requests
        (id, tenant_id, resource, format, compression, filters, columns, webhook_url,
         email, idempotency_key, idempotency_fingerprint, link_expiry_hours,
         max_rows_per_file, destination_id)
    VALUES (%(id)s, %(tenant_id)s, %(resource)s, %(format)s, %(compression)s,
            %(filters)s::jsonb, %(columns)s, %(webhook_url)s, %(email)s,
            %(idempotency_key)s, %(fingerprint)s, %(link_expiry_hours)s,
            %(max_rows_per_file)s, %(destination_id)s::uuid)
    RETURNING *
"""


class RequestStore(RequestRows):
    """Every write of export_requests but a feed's deliveries'; each method is one short
    transaction on the store's connection (its own, or the one it is lent)."""

    def create(self, **fields: Any) -> str:
        """`submit`, for callers that need the id only (the id of the first row on a replay)."""
        return self.submit(**fields).row.id

    def submit(
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
        fingerprint: str | None = None,
        link_expiry_hours: int | None = None,
        max_rows_per_file: int | None = None,
        destination_id: str | None = None,
    ) -> Created:
        """Insert a pending request, or find the one this idempotency key made.

        The one idempotency rule of every door: a key is the tenant's; the same key with the same
        request (`fingerprint`, by default the fields given here) answers the first row
        (replayed), with another request IdempotencyConflict, while the first is still being
        created IdempotencyInFlight. The database refuses what no door may insert: over the
        tenant's cap of active requests (TooManyActive) or a size limit (RequestTooLarge)."""
        fields = {
            "tenant_id": tenant_id,
            "resource": resource,
            "format": format,
            "compression": compression,
            "filters": json.dumps(filters or {}),
            "columns": columns,
            "webhook_url": webhook_url,
            "email": email,
            "idempotency_key": idempotency_key,
            "link_expiry_hours": link_expiry_hours,
            "max_rows_per_file": max_rows_per_file,
            "destination_id": destination_id,
        }
        if fingerprint is None:
            fingerprint = request_fingerprint(
                tenant_id, {k: v for k, v in fields.items() if k != "tenant_id"}
            )
        params = {**fields, "id": uuid.uuid4(), "fingerprint": fingerprint}
        for _ in range(2):
            try:
                return self.insert_once(params)
            except psycopg.errors.UniqueViolation:
                # Another door (SQL) inserted the same key between our look and our insert: look again.
                continue
        raise IdempotencyInFlight()

    def insert_once(self, params: dict[str, Any]) -> Created:
        """One attempt of `submit`, in one transaction."""
        key, tenant_id = params["idempotency_key"], params["tenant_id"]
        try:
            conn = self.conn
            if key is None and conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
                # Nothing to look up first: the insert is its own transaction, one round trip.
                row = self.cursor().execute(INSERT_REQUEST, params).fetchone()
                assert row is not None
                return Created(as_request(row), replayed=False)
            with self.transaction() as cur:
                if key is not None:
                    got = cur.execute(IDEMPOTENCY_LOCK, [tenant_id, key]).fetchone()
                    if not got or not got["ok"]:
                        raise IdempotencyInFlight()
                    first = cur.execute(
                        "SELECT * FROM export_requests WHERE tenant_id = %s AND idempotency_key = %s",
                        [tenant_id, key],
                    ).fetchone()
                    if first is not None:
                        if first["idempotency_fingerprint"] != params["fingerprint"]:
                            raise IdempotencyConflict()
                        return Created(as_request(first), replayed=True)
                row = cur.execute(INSERT_REQUEST, params).fetchone()
                assert row is not None
                return Created(as_request(row), replayed=False)
        except psycopg.errors.UniqueViolation:
            raise
        except psycopg.Error as exc:
            mapped = refusal(exc)
            if mapped is exc:
                raise
            if isinstance(mapped, TooManyActive):
                self.count_refusal(TENANT_ACTIVE_CAP)
            raise mapped from None

    def count_refusal(self, reason: str) -> None:
        """Count a cap's refusal for the metrics; a count that cannot be written never changes the
        answer the caller gets."""
        with contextlib.suppress(psycopg.Error):
            RefusalStore.on(self.conn).record(reason)

    def set_tenant_max_active(self, value: int) -> None:
        """Store EXPORT_TENANT_MAX_ACTIVE where the insert trigger reads it."""
        set_tenant_max_active(self.conn, value)

    def get(self, request_id: str) -> StoredRequest | None:
        """The row, whoever's it is (the service's own doors); None for an id that names no row."""
        if not is_request_id(request_id):
            return None
        return self.fetch_one("SELECT * FROM export_requests WHERE id = %s", [request_id])

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
        """An active row whose run was canceled (in Dagster, or a batch's tenant): flagged for the
        cancel sensor, which deletes what the run wrote."""
        return self._update(
            request_id,
            "status = 'canceled', error = %s, error_code = 'canceled', completed_at = now(), "
            "cancel_requested_at = coalesce(cancel_requested_at, now()), cancel_cleanup_pending = true",
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
        """Succeeded rows past their links' expiry, oldest first: what the janitor deletes."""
        return self.fetch_all(
            "SELECT * FROM export_requests WHERE status = 'succeeded' AND expires_at < now() "
            "ORDER BY expires_at LIMIT %s",
            [limit],
        )

    def mark_expired(self, request_id: str) -> bool:
        """A succeeded row whose files were deleted (the janitor, the tenant's DELETE): no link, and
        expired by now at the latest."""
        return self._update(
            request_id,
            "status = 'expired', download_url = NULL, expires_at = least(expires_at, now())",
            [],
            only_if=("succeeded",),
        )

    def cancel(self, request_id: str, tenant_id: str | None) -> StoredRequest | None:
        """The cancel of every door (`tenant_id` None: an operator's, any tenant). A pending, queued
        or running row becomes `canceled` at once, in one transaction: whatever a run does after
        that, it cannot commit the export (its ops commit only a `running` row, and a trigger keeps
        a canceled row canceled). A row that was `running` (its rows counted, files being written)
        gets its export.canceled notices in the same transaction, for its own targets or else the
        tenant's defaults (the rule of every notification); one canceled before its run started
        notifies nobody. A row a run may have taken (queued, running) is flagged for the cancel
        sensor (`cancel_cleanup_pending`), which stops the run so that it is never retried and
        deletes the export's folder. Returns the row as it is now (a finished row unchanged, a
        canceled one unchanged: canceling twice changes nothing), None when the tenant has no such
        export."""
        if not is_request_id(request_id):
            return None
        scope = {"id": request_id, "t": tenant_id}
        with self.transaction() as cur:
            before = cur.execute(
                "SELECT * FROM export_requests WHERE id = %(id)s "
                "AND (%(t)s::text IS NULL OR tenant_id = %(t)s) FOR UPDATE",
                scope,
            ).fetchone()
            if before is None or before["status"] not in ACTIVE:
                return as_request(before) if before is not None else None
            was = before["status"]
            row = cur.execute(
                """
                UPDATE export_requests
                SET status = 'canceled', error_code = 'canceled', error = %(error)s,
                    cancel_requested_at = coalesce(cancel_requested_at, now()), completed_at = now(),
                    cancel_cleanup_pending = %(cleanup)s, updated_at = now()
                WHERE id = %(id)s
                RETURNING *
                """,
                {
                    "id": request_id,
                    # A pending row that no run has taken: no run can take it any more (a claim
                    # needs pending or queued), so there is nothing to stop and nothing written.
                    "cleanup": not (was == "pending" and before["run_id"] is None),
                    "error": TENANT_MESSAGES["canceled"] if was == "running" else CANCELED_BEFORE_START,
                },
            ).fetchone()
            assert row is not None
            canceled = as_request(row)
            if was == "running":
                self._record_canceled(canceled)
            return canceled

    def _record_canceled(self, row: StoredRequest) -> None:
        """export.canceled for a row canceled while running, in the caller's transaction."""
        webhook_url, email = row.webhook_url, row.email
        if not (webhook_url or email):
            defaults = TenantSettingsStore.on(self.conn).get(row.tenant_id)
            webhook_url, email = defaults.webhook_url, defaults.email
        if not (webhook_url or email):
            return
        notice = ended(
            CANCELED,
            export_id=row.id,
            tenant_id=row.tenant_id,
            resource=row.resource,
            rows=row.rows_exported,
            bytes_written=row.bytes_written,
            error=row.error or TENANT_MESSAGES["canceled"],
        )
        enqueue(
            DeliveryStore.on(self.conn),
            notice,
            request_id=row.id,
            tenant_id=row.tenant_id,
            webhook_url=webhook_url,
            email=email,
        )

    def cancel_cleanups(self, limit: int = 200) -> list[StoredRequest]:
        """Canceled rows whose run may still be going or whose folder may hold files: the cancel
        sensor's work list, oldest cancel first."""
        return self.fetch_all(
            "SELECT * FROM export_requests WHERE cancel_cleanup_pending "
            "ORDER BY cancel_requested_at NULLS FIRST, id LIMIT %s",
            [limit],
        )

    def cleanup_done(self, request_id: str) -> bool:
        """The cancel sensor stopped the row's run and emptied its folder."""
        return self._update(request_id, "cancel_cleanup_pending = false", [])

    def is_canceled(self, request_id: str) -> bool:
        """Whether the row was canceled: what a run checks before it commits anything."""
        if not is_request_id(request_id):
            return False
        row = self.execute("SELECT status FROM export_requests WHERE id = %s", [request_id]).fetchone()
        return row is not None and row["status"] == "canceled"


def _known_code(code: str) -> str:
    return code if code in ERROR_CODES else "internal"
