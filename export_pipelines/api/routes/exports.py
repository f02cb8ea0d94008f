"""Reading exports: `GET /v1/exports/{id}` (the status document, ETag → 304 for pollers) and
`GET /v1/exports` (the tenant's exports, newest first, keyset-paginated on (created_at, id) —
never by counting rows to skip).

(No `from __future__ import annotations`: FastAPI resolves the handlers' annotations.)"""

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response

from export_pipelines.api.auth import Auth
from export_pipelines.api.errors import ApiError
from export_pipelines.api.schemas import ERRORS, STATUSES, ExportId, ExportList, ExportStatus
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION, etag_of, json_response, status_document
from export_pipelines.core.requests.request_reads import RequestReads
from export_pipelines.core.requests.request_row import StoredRequest, is_request_id

DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100


def _cursor_encode(row: StoredRequest) -> str:
    raw = json.dumps([row.created_at.isoformat(), str(row.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_decode(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, rid = json.loads(raw)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not is_request_id(rid):
            raise ValueError
        return when, rid
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise ApiError(
            422, "invalid_request", "cursor: not a cursor this API gave (use next_cursor as is)", "cursor"
        ) from None


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()

    @router.get(
        f"/{API_VERSION}/exports/{{export_id}}",
        tags=["exports"],
        response_model=None,
        responses={
            200: {"model": ExportStatus},
            304: {"description": "not modified (If-None-Match)"},
            **ERRORS,
        },
    )
    def get_export(
        export_id: ExportId,
        who: Auth,
        if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Response:
        """The export's status document: status, progress, queue position, timestamps, error."""
        doc = api.load(who, export_id).doc
        etag = etag_of(doc)
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if if_none_match and etag in [t.strip().removeprefix("W/") for t in if_none_match.split(",")]:
            return Response(status_code=304, headers=headers)
        return json_response(doc, 200, headers)

    @router.get(
        f"/{API_VERSION}/exports",
        tags=["exports"],
        response_model=None,
        responses={200: {"model": ExportList}, **ERRORS},
    )
    def list_exports(
        who: Auth,
        status: Annotated[
            str | None, Query(description=f"one of: {', '.join(STATUSES)}", max_length=32)
        ] = None,
        cursor: Annotated[
            str | None, Query(description="next_cursor of the previous page", max_length=512)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT,
        feed_id: Annotated[
            str | None, Query(description="only this feed's deliveries", max_length=64)
        ] = None,
    ) -> JSONResponse:
        """The tenant's exports, newest first, keyset-paginated on (created_at, id)."""
        with api.pool.connection() as conn:
            who.resolve(conn)
            if status is not None and status not in STATUSES:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"status: {status!r} is not a status; allowed: {', '.join(STATUSES)}",
                    "status",
                )
            if feed_id is not None and not is_request_id(feed_id):
                raise ApiError(422, "invalid_request", "feed_id: not a feed id (a UUID)", "feed_id")
            after = _cursor_decode(cursor) if cursor else None
            rows = RequestReads.on(conn).page(
                who.tenant_id, status=status, after=after, limit=limit + 1, feed_id=feed_id
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return json_response(
            {
                "data": [status_document(r) for r in rows],
                "next_cursor": _cursor_encode(rows[-1]) if more else None,
            }
        )

    return router
