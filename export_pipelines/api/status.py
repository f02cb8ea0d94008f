"""The export's status document (DESIGN §3.7): status, progress, percent, queue position,
timestamps and error, as every route and the SSE stream answer it; its ETag; the fair queue's
position of a waiting export."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import JSONResponse

from export_pipelines.api.schemas import FINAL_STATUSES, STATUSES

API_VERSION = "v1"
MAX_ERROR_MESSAGE_CHARS = 500


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def iso_unix(seconds: float) -> str:
    return iso(datetime.fromtimestamp(seconds, UTC)) or ""


def _percent(row: dict[str, Any]) -> float | None:
    if row["status"] == "succeeded":
        return 100.0
    total = row.get("rows_total")
    if total is None:
        return None
    if total <= 0:
        return 100.0 if row["status"] in FINAL_STATUSES else 0.0
    return round(min(100.0, 100.0 * (row.get("rows_exported") or 0) / total), 1)


def _error(row: dict[str, Any]) -> dict[str, str] | None:
    status = row["status"]
    code = row.get("error_code")
    if status == "canceled":
        code = code or "canceled"
    elif status != "failed" and not code:
        return None
    code = code or "internal"
    message = (row.get("error") or "").strip()
    if not message:
        message = {"canceled": "the export was canceled"}.get(code, "the export failed")
    return {"code": code, "message": message[:MAX_ERROR_MESSAGE_CHARS]}


def status_document(row: dict[str, Any], queue_position: int | None = None) -> dict[str, Any]:
    rid = str(row["id"])
    base = f"/{API_VERSION}/exports/{rid}"
    columns = row.get("columns")
    return {
        "id": rid,
        "object": "export",
        "tenant_id": row["tenant_id"],
        "resource": row["resource"],
        "format": row["format"],
        "compression": row.get("compression"),
        "columns": list(columns) if columns is not None else None,
        "filters": row.get("filters") if isinstance(row.get("filters"), dict | list | str | int) else {},
        "status": row["status"] if row["status"] in STATUSES else "failed",
        "attempt": row.get("attempt") or 1,
        "rows_total": row.get("rows_total"),
        "rows_exported": row.get("rows_exported") or 0,
        "bytes_written": row.get("bytes_written") or 0,
        "percent": _percent(row),
        "queue_position": queue_position,
        "created_at": iso(row["created_at"]),
        "queued_at": iso(row.get("queued_at")),
        "started_at": iso(row.get("started_at")),
        "completed_at": iso(row.get("completed_at")),
        "updated_at": iso(row.get("updated_at") or row["created_at"]),
        "expires_at": iso(row.get("expires_at")),
        "cancel_requested_at": iso(row.get("cancel_requested_at")),
        "error": _error(row),
        "links": {
            "self": base,
            "files": f"{base}/files",
            "manifest": f"{base}/manifest",
            "events": f"{base}/events",
            "cancel": f"{base}/cancel",
        },
    }


def etag_of(doc: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return f'"{digest[:32]}"'


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(doc, status_code=status, headers=headers)


# The queue position of a waiting row, as the fair queue launches: round robin across tenants in
# creation order. If the row is its tenant's k-th waiting row, the rows ahead are its tenant's k-1
# earlier ones, plus from every other tenant t its first min(n_t, k-1) rows, plus t's k-th row when
# that was created earlier (that is, when t has at least k rows created before this one). One
# hash aggregate over the waiting rows, no sort (QUEUE_POSITION_REFERENCE_SQL, a window function
# that ranks every row, is the definition the tests compare it with).
QUEUE_POSITION_SQL = """
WITH me AS (SELECT tenant_id, created_at, id FROM export_requests WHERE id = %(id)s),
per AS (
    SELECT r.tenant_id,
           count(*) AS n,
           count(*) FILTER (WHERE (r.created_at, r.id) < (me.created_at, me.id)) AS before
    FROM export_requests r, me
    WHERE r.status IN ('pending', 'queued')
    GROUP BY r.tenant_id
), mine AS (SELECT per.before + 1 AS k FROM per, me WHERE per.tenant_id = me.tenant_id)
SELECT coalesce(sum(CASE WHEN per.tenant_id = me.tenant_id THEN per.before
                         ELSE least(per.n, mine.k - 1) + (per.before >= mine.k)::int END), 0)::bigint AS ahead
FROM per, me, mine
"""
QUEUE_POSITION_REFERENCE_SQL = """
WITH waiting AS (
    SELECT id, created_at,
           row_number() OVER (PARTITION BY tenant_id ORDER BY created_at, id) AS rank
    FROM export_requests WHERE status IN ('pending', 'queued')
), me AS (SELECT rank, created_at, id FROM waiting WHERE id = %(id)s)
SELECT count(*) AS ahead FROM waiting, me
WHERE waiting.id <> me.id
  AND (waiting.rank < me.rank
       OR (waiting.rank = me.rank AND (waiting.created_at, waiting.id) < (me.created_at, me.id)))
"""
