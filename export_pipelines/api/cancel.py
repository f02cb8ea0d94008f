"""Ending an export early: `POST /v1/exports/{id}/cancel` (a pending export is canceled at once
and its `export.canceled` notification recorded; a queued or running one is marked and its run
terminated by the Dagster side) and `DELETE /v1/exports/{id}` (the files deleted now, status
`expired`).

(No `from __future__ import annotations`: FastAPI resolves the handlers' annotations.)"""

from typing import Any

import psycopg
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from psycopg.types.json import Jsonb

from export_pipelines.api.auth import Auth
from export_pipelines.api.errors import ApiError, not_found
from export_pipelines.api.schemas import ACTIVE_STATUSES, ERRORS, ErrorBody, ExportId, ExportStatus
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION, json_response, status_document
from export_pipelines.core.delivery.drain import webhook_payload
from export_pipelines.core.requests.request_row import folder_export_id, is_request_id
from export_pipelines.core.storage.layout import ExportLocation
from export_pipelines.core.storage.s3 import delete_prefix

CANCELED_BEFORE_START = "canceled before it started"


def enqueue_canceled(conn: psycopg.Connection[Any], row: dict[str, Any]) -> None:
    """export_deliveries rows (webhook, email) for an export the API canceled before any run:
    the payload of core.delivery.drain.webhook_payload, event export.canceled."""
    payload = webhook_payload(
        "export.canceled",
        export_id=str(row["id"]),
        tenant_id=row["tenant_id"],
        resource=row["resource"],
        rows=0,
        bytes_written=0,
        error=CANCELED_BEFORE_START,
    )
    subject = f"Your export of {row['resource']} was canceled"
    for channel, target in (("webhook", row.get("webhook_url")), ("email", row.get("email"))):
        if target:
            conn.execute(
                """
                INSERT INTO export_deliveries
                    (request_id, tenant_id, event, channel, target, payload, email_subject, email_body)
                VALUES (%s, %s, 'export.canceled', %s, %s, %s, %s, %s)
                """,
                [
                    row["id"],
                    row["tenant_id"],
                    channel,
                    target,
                    Jsonb(payload),
                    subject if channel == "email" else None,
                    f"{subject} before it started.\n" if channel == "email" else None,
                ],
            )


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()
    settings = api.settings

    @router.post(
        f"/{API_VERSION}/exports/{{export_id}}/cancel",
        status_code=202,
        tags=["exports"],
        response_model=None,
        responses={
            202: {"model": ExportStatus, "description": "canceled, or cancel requested (the run stops)"},
            409: {"model": ErrorBody, "description": "already finished"},
            **ERRORS,
        },
    )
    def cancel_export(export_id: ExportId, who: Auth) -> JSONResponse:
        """Cancel: a pending export is canceled at once; a queued or running one is marked
        (`cancel_requested_at`) and its run terminated by the Dagster side."""
        with api.pool.connection() as conn:
            who.resolve(conn)
            if not is_request_id(export_id):
                raise not_found()
            scope = {"id": export_id, "t": who.tenant_id}
            with conn.transaction():
                row = conn.execute(
                    """
                    UPDATE export_requests
                    SET status = 'canceled', error_code = 'canceled', error = %(error)s,
                        cancel_requested_at = coalesce(cancel_requested_at, now()), completed_at = now(),
                        updated_at = now()
                    WHERE id = %(id)s AND (%(t)s::text IS NULL OR tenant_id = %(t)s)
                      AND status = 'pending' AND run_id IS NULL
                    RETURNING *
                    """,
                    {**scope, "error": CANCELED_BEFORE_START},
                ).fetchone()
                if row is not None:
                    # No run will tell anyone: record the export.canceled notification here, in
                    # the same transaction, for the delivery sensor to send.
                    enqueue_canceled(conn, row)
            if row is None:
                row = conn.execute(
                    """
                    UPDATE export_requests
                    SET cancel_requested_at = coalesce(cancel_requested_at, now()), updated_at = now()
                    WHERE id = %(id)s AND (%(t)s::text IS NULL OR tenant_id = %(t)s)
                      AND status IN ('pending', 'queued', 'running')
                    RETURNING *
                    """,
                    scope,
                ).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT * FROM export_requests WHERE id = %(id)s "
                    "AND (%(t)s::text IS NULL OR tenant_id = %(t)s)",
                    scope,
                ).fetchone()
                if row is None:
                    raise not_found()
                if row["status"] != "canceled":
                    raise ApiError(
                        409,
                        "not_cancelable",
                        f"the export is {row['status']}; only pending, queued or running exports can be "
                        "canceled",
                    )
        doc = status_document(row)
        return json_response(doc, 202, {"Location": doc["links"]["self"]})

    @router.delete(
        f"/{API_VERSION}/exports/{{export_id}}",
        tags=["exports"],
        response_model=None,
        responses={
            200: {"model": ExportStatus, "description": "files deleted; status expired"},
            409: {"model": ErrorBody, "description": "not finished: cancel it first"},
            **ERRORS,
        },
    )
    def delete_export(export_id: ExportId, who: Auth) -> JSONResponse:
        """Delete the export's files now (status `expired`); the status document stays readable."""
        row = api.load(who, export_id, position=False)["row"]
        if row["status"] not in ("succeeded", "expired"):
            raise ApiError(
                409,
                "not_deletable",
                f"the export is {row['status']}; only succeeded exports have files to delete"
                + (" (cancel it first)" if row["status"] in ACTIVE_STATUSES else ""),
            )
        if row["status"] == "succeeded":
            location = ExportLocation(
                settings.prefix,
                row["tenant_id"],
                row["resource"],
                folder_export_id(row.get("export_id"), row["id"]),
            )
            delete_prefix(api.s3, api.bucket, location.folder)
            with api.pool.connection() as conn:
                conn.execute(
                    "UPDATE export_requests SET status = 'expired', download_url = NULL, "
                    "expires_at = least(expires_at, now()), updated_at = now() "
                    "WHERE id = %s AND status = 'succeeded'",
                    [row["id"]],
                )
        return json_response(api.load(who, export_id, position=False)["doc"])

    return router
