"""Ending an export early: `POST /v1/exports/{id}/cancel` (the request store's cancel: a pending,
queued or running export becomes `canceled` at once; one that was running has its
`export.canceled` notification recorded; the Dagster side then stops its run and empties its
folder) and `DELETE /v1/exports/{id}` (the files deleted now, status `expired`).

(No `from __future__ import annotations`: FastAPI resolves the handlers' annotations.)"""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from export_pipelines.api.auth import Auth
from export_pipelines.api.errors import ApiError, not_found
from export_pipelines.api.schemas import ACTIVE_STATUSES, ERRORS, ErrorBody, ExportId, ExportStatus
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION, json_response, status_document
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.storage.s3 import delete_prefix


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()
    settings = api.settings

    @router.post(
        f"/{API_VERSION}/exports/{{export_id}}/cancel",
        status_code=202,
        tags=["exports"],
        response_model=None,
        responses={
            202: {"model": ExportStatus, "description": "canceled (its run, if any, is stopped)"},
            409: {"model": ErrorBody, "description": "already finished"},
            **ERRORS,
        },
    )
    def cancel_export(export_id: ExportId, who: Auth) -> JSONResponse:
        """Cancel: a pending, queued or running export is `canceled` at once and is never produced;
        its run, if one started, is stopped by the Dagster side and its files deleted. Canceling a
        canceled export again changes nothing (202); a finished one answers 409."""
        api.rate_limits.check_presented(who.token)
        with api.pool.connection() as conn:
            who.resolve(conn)
            api.rate_limits.check(who)
            row = RequestStore.on(conn).cancel(export_id, who.tenant_id)
        if row is None:
            raise not_found()
        if row.status not in ACTIVE_STATUSES and row.status != "canceled":
            raise ApiError(
                409,
                "not_cancelable",
                f"the export is {row.status}; only pending, queued or running exports can be canceled",
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
        row = api.load(who, export_id, position=False).row
        api.rate_limits.check(who)
        if row.status not in ("succeeded", "expired"):
            raise ApiError(
                409,
                "not_deletable",
                f"the export is {row.status}; only succeeded exports have files to delete"
                + (" (cancel it first)" if row.status in ACTIVE_STATUSES else ""),
            )
        if row.status == "succeeded":
            with api.storage() as s3:
                delete_prefix(s3, api.bucket, row.location(settings.prefix).folder)
            with api.pool.connection() as conn:
                RequestStore.on(conn).mark_expired(row.id)
        return json_response(api.load(who, export_id, position=False).doc)

    return router
