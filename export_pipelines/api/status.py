"""The export's status document (docs/api.md): status, progress, percent, queue position,
timestamps and error, as every route and the SSE stream answer it; and its ETag."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import JSONResponse

from export_pipelines.api.schemas import FINAL_STATUSES, STATUSES
from export_pipelines.core.requests.request_row import StoredRequest

API_VERSION = "v1"
MAX_ERROR_MESSAGE_CHARS = 500


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def iso_unix(seconds: float) -> str:
    return iso(datetime.fromtimestamp(seconds, UTC)) or ""


def _percent(row: StoredRequest) -> float | None:
    if row.status == "succeeded":
        return 100.0
    total = row.rows_total
    if total is None:
        return None
    if total <= 0:
        return 100.0 if row.status in FINAL_STATUSES else 0.0
    return round(min(100.0, 100.0 * (row.rows_exported or 0) / total), 1)


def _error(row: StoredRequest) -> dict[str, str] | None:
    status = row.status
    code = row.error_code
    if status == "canceled":
        code = code or "canceled"
    elif status != "failed" and not code:
        return None
    code = code or "internal"
    message = (row.error or "").strip()
    if not message:
        message = {"canceled": "the export was canceled"}.get(code, "the export failed")
    return {"code": code, "message": message[:MAX_ERROR_MESSAGE_CHARS]}


def status_document(row: StoredRequest, queue_position: int | None = None) -> dict[str, Any]:
    rid = str(row.id)
    base = f"/{API_VERSION}/exports/{rid}"
    return {
        "id": rid,
        "object": "export",
        "tenant_id": row.tenant_id,
        "resource": row.resource,
        "format": row.format,
        "compression": row.compression,
        "columns": list(row.columns) if row.columns is not None else None,
        "filters": row.filters if isinstance(row.filters, dict | list | str | int) else {},
        "status": row.status if row.status in STATUSES else "failed",
        "attempt": row.attempt or 1,
        "rows_total": row.rows_total,
        "rows_exported": row.rows_exported or 0,
        "bytes_written": row.bytes_written or 0,
        "percent": _percent(row),
        "queue_position": queue_position,
        "created_at": iso(row.created_at),
        "queued_at": iso(row.queued_at),
        "started_at": iso(row.started_at),
        "completed_at": iso(row.completed_at),
        "updated_at": iso(row.updated_at or row.created_at),
        "expires_at": iso(row.expires_at),
        "cancel_requested_at": iso(row.cancel_requested_at),
        "error": _error(row),
        # A feed's delivery (docs/feeds.md): its feed and number; null for other exports.
        "feed_id": row.feed_id,
        "sequence": row.sequence,
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
