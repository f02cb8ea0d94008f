"""`POST /v1/exports`: validate the body with the request sensor's own checks (so both doors say
the same thing) and create the request through the request store, whose one idempotency rule
answers `Idempotency-Key` (same body → the first response, another body → 422, in flight → 409)
and whose database refuses a tenant over its cap (429).

(No `from __future__ import annotations`: FastAPI resolves the handler's annotations.)"""

from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from export_pipelines.api.auth import Auth, Principal
from export_pipelines.api.errors import ApiError, json_object_body
from export_pipelines.api.schemas import (
    CREATE_BODY_SCHEMA,
    ERRORS,
    ErrorBody,
    ExportStatus,
    create_body_schema,
)
from export_pipelines.api.service import DEFAULT_LINK_HOURS, ExportApi
from export_pipelines.api.status import API_VERSION, json_response, status_document
from export_pipelines.core.delivery.destinations.destination_store import DestinationStore
from export_pipelines.core.engine.plan import check_pdf_rows, pdf_rows_at_most
from export_pipelines.core.errors import Rejected
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.requests.request_row import check_request_fields
from export_pipelines.core.requests.request_store import RequestStore, request_fingerprint

MAX_IDEMPOTENCY_KEY_CHARS = 255
BODY_FIELDS = frozenset(CREATE_BODY_SCHEMA["properties"])
NOTIFY_FIELDS = frozenset({"webhook_url", "email"})


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()
    settings = api.settings

    @router.post(
        f"/{API_VERSION}/exports",
        status_code=202,
        tags=["exports"],
        response_model=None,
        responses={
            202: {"model": ExportStatus, "description": "accepted; `Location` is the status URL"},
            200: {"model": ExportStatus, "description": "an idempotent replay of an earlier request"},
            409: {"model": ErrorBody, "description": "a request with this Idempotency-Key is in flight"},
            429: {"model": ErrorBody, "description": "too many active exports; see Retry-After"},
            **ERRORS,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": create_body_schema(list(api.catalog.resources))}},
            }
        },
    )
    async def create_export(
        request: Request,
        who: Auth,
        idempotency_key: Annotated[
            str | None, Header(max_length=MAX_IDEMPOTENCY_KEY_CHARS, description="replay-safe retries")
        ] = None,
    ) -> JSONResponse:
        """Request an export. Answers at once (202) with the export's status document; the request
        sensor launches the run."""
        if api.recently_admitted(who.token):
            # A key admitted here lately (an app creating exports): its body first, then the key,
            # the limits and the insert in one worker-thread call on one connection. The key is
            # still looked up before anything is written: one revoked since is answered 401.
            raw = await request.body()
            return await run_in_threadpool(_admit_and_create, who, raw, idempotency_key)
        # Any other key and the rate limits first: an unknown key or a client over its limit is
        # answered before its body is read (a body is bounded by the server's body limit either way).
        await run_in_threadpool(api.admit, who)
        raw = await request.body()
        return await run_in_threadpool(_create, who, raw, idempotency_key)

    def _create(who: Principal, raw: bytes, idempotency_key: str | None) -> JSONResponse:
        with api.pool.connection() as conn:
            return _create_on(conn, who, raw, idempotency_key)

    def _admit_and_create(who: Principal, raw: bytes, idempotency_key: str | None) -> JSONResponse:
        with api.pool.connection() as conn:
            api.admit_on(conn, who)
            return _create_on(conn, who, raw, idempotency_key)

    def _create_on(
        conn: psycopg.Connection[Any], who: Principal, raw: bytes, idempotency_key: str | None
    ) -> JSONResponse:
        body = json_object_body(raw, BODY_FIELDS, BODY_FIELDS - {"tenant_id"})
        tenant_id = who.tenant_id
        if "tenant_id" in body:
            if not who.operator:
                raise ApiError(422, "invalid_request", "tenant_id: set by the API key; omit it", "tenant_id")
            tenant_id = body["tenant_id"]
            if isinstance(tenant_id, str):
                who.acting_for = tenant_id  # the request log names the tenant the operator acted for
        if tenant_id is None:
            raise ApiError(
                422,
                "invalid_request",
                "tenant_id: an operator key names the tenant (body tenant_id or ?tenant_id=)",
                "tenant_id",
            )
        notify = body.get("notify") or {}
        if not isinstance(notify, dict):
            raise ApiError(
                422, "invalid_request", "notify: must be an object {webhook_url?, email?}", "notify"
            )
        extra = sorted(str(k) for k in notify if k not in NOTIFY_FIELDS)
        if extra:
            raise ApiError(
                422,
                "invalid_request",
                f"notify.{extra[0]}: unknown field; allowed: email, webhook_url",
                f"notify.{extra[0]}",
            )
        if idempotency_key is not None and (not idempotency_key.strip() or not idempotency_key.isprintable()):
            raise ApiError(
                422, "invalid_request", "Idempotency-Key: printable text, 1-255 characters", "Idempotency-Key"
            )
        fields = {
            "tenant_id": tenant_id,
            "resource": body.get("resource"),
            "format": body.get("format") or "csv",
            "compression": body.get("compression"),
            "columns": body.get("columns"),
            "filters": body.get("filters") or {},
            "webhook_url": notify.get("webhook_url") or None,
            "email": notify.get("email") or None,
        }
        link_hours = body.get("link_expiry_hours")
        max_rows = body.get("max_rows_per_file")
        destination_id = body.get("destination_id")
        if destination_id is not None and (
            not isinstance(destination_id, str)
            or DestinationStore.on(conn).get(destination_id, tenant_id) is None
        ):
            raise ApiError(
                422,
                "invalid_request",
                "destination_id: not a destination of this tenant (GET /v1/destinations lists them)",
                "destination_id",
            )
        try:
            # The request sensor's own checks, so an app hears the same message from both doors.
            # The send-time rules for the webhook (its host resolved and checked) as well.
            check_request_fields(
                api.catalog,
                settings.webhook_allowlist,
                **fields,
                allow_private=settings.webhook_allow_private,
            )
            export_request = build_request(
                api.catalog,
                tenant_id=tenant_id,
                resource=fields["resource"],
                format=fields["format"],
                compression=fields["compression"],
                columns=fields["columns"],
                filters=fields["filters"],
                max_rows_per_file=max_rows,
                link_expiry_hours=DEFAULT_LINK_HOURS if link_hours is None else link_hours,
            )
        except Rejected as exc:
            field = exc.field
            if field in ("webhook_url", "email"):
                field = f"notify.{field}"
            raise ApiError(422, "invalid_request", str(exc), field) from None
        if export_request.format == "pdf":
            # Refused now, not 2-4 s later in its run, when the count is cheap (plan.py says how).
            rows = pdf_rows_at_most(conn, api.catalog, export_request, settings.pdf_max_rows)
            if rows is not None:
                try:
                    check_pdf_rows(rows, settings.pdf_max_rows, exact=False)
                except Rejected as exc:
                    raise ApiError(422, "invalid_request", str(exc), exc.field) from None
        created = RequestStore.on(conn).submit(
            **fields,
            idempotency_key=idempotency_key,
            fingerprint=request_fingerprint(tenant_id, body),
            link_expiry_hours=link_hours,
            max_rows_per_file=max_rows,
            destination_id=destination_id,
        )
        if not created.replayed:
            api.doorbell.ring()
        doc = status_document(created.row, None)
        headers = {"Location": doc["links"]["self"]}
        if created.replayed:
            headers["Idempotent-Replayed"] = "true"
        return json_response(doc, 202, headers)

    return router
