"""`GET` and `PUT /v1/notify-settings`: the key's tenant's default notify targets (the tenant
settings store; docs/api.md), used by its monthly dumps and by requests without targets.

PUT replaces both targets: a field left out or null is cleared (`{}` clears both). The key is
checked before the body is read; targets are validated like a request's (`notify`): 422 naming the
field.

(No `from __future__ import annotations`: FastAPI resolves the handlers' annotations.)"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from export_pipelines.api.auth import Auth, Principal
from export_pipelines.api.errors import ApiError
from export_pipelines.api.schemas import ERRORS
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION
from export_pipelines.core.errors import Rejected
from export_pipelines.core.requests.request import check_notify
from export_pipelines.core.requests.tenant_settings import TenantSettingsStore
from export_pipelines.core.storage.migrations.request_table import MAX_EMAIL_CHARS, MAX_WEBHOOK_URL_CHARS

PATH = f"/{API_VERSION}/notify-settings"


class NotifySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(default=None, max_length=MAX_WEBHOOK_URL_CHARS)
    email: str | None = Field(default=None, max_length=MAX_EMAIL_CHARS)


class NotifySettingsDocument(NotifySettings):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str


def _tenant(who: Any) -> str:
    tenant = who.tenant_id
    if tenant is None:  # an operator key acting for no tenant
        raise ApiError(422, "invalid_request", "tenant_id: operator keys must name a tenant", "tenant_id")
    return tenant


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()

    @router.get(PATH, tags=["settings"], responses={200: {"model": NotifySettingsDocument}, **ERRORS})
    def get_notify_settings(who: Auth) -> JSONResponse:
        """The tenant's default notify targets (nulls when none are set)."""
        with api.pool.connection() as conn:
            who.resolve(conn)
            targets = TenantSettingsStore.on(conn).get(_tenant(who))
        return JSONResponse(targets.as_dict())

    @router.put(
        PATH,
        tags=["settings"],
        responses={200: {"model": NotifySettingsDocument}, **ERRORS},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": NotifySettings.model_json_schema()}},
            }
        },
    )
    async def put_notify_settings(request: Request, who: Auth) -> JSONResponse:
        """Replace the tenant's default notify targets; a field left out or null is cleared."""
        # The key first, then the body: nothing about the rules (the allowlist) before the key.
        await run_in_threadpool(api.admit, who)
        raw = await request.body()
        return await run_in_threadpool(_put, who, raw)

    def _put(who: Principal, raw: bytes) -> JSONResponse:
        try:
            body = NotifySettings.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {}
            field = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise ApiError(422, "invalid_request", f"{field}: {first.get('msg', 'invalid')}", field) from None
        webhook_url = body.webhook_url or None
        email = body.email or None
        try:
            check_notify(
                webhook_url,
                email,
                api.settings.webhook_allowlist,
                allow_private=api.settings.webhook_allow_private,
            )
        except Rejected as exc:
            raise ApiError(422, "invalid_request", str(exc), exc.field) from None
        with api.pool.connection() as conn:
            targets = TenantSettingsStore.on(conn).set(
                _tenant(who), webhook_url=webhook_url, email=email, allowlist=api.settings.webhook_allowlist
            )
        return JSONResponse(targets.as_dict())

    return router
