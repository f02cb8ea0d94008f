"""`/v1/destinations`: a tenant's own buckets, containers and SFTP servers (docs/destinations.md).

`POST` checks kind, config and credentials field by field, and the host by the webhook target rules;
the credentials are encrypted (EXPORT_SECRETS_KEY) before they reach the table and are never read
back: `GET` shows a fingerprint. `POST …/{id}/test` writes, reads back and deletes a probe.

(No `from __future__ import annotations`: FastAPI resolves the handler's annotations.)"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from export_pipelines.api.auth import Auth, Principal
from export_pipelines.api.errors import ApiError, json_object_body, not_found
from export_pipelines.api.schemas import ERRORS, ErrorBody
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION, json_response
from export_pipelines.core.delivery.destinations.config import check_destination
from export_pipelines.core.delivery.destinations.destination_store import DestinationStore
from export_pipelines.core.delivery.destinations.secrets import SecretBox
from export_pipelines.core.delivery.destinations.service import test_destination
from export_pipelines.core.errors import DestinationError, DestinationInUse

PATH = f"/{API_VERSION}/destinations"
BODY_FIELDS = ("kind", "name", "config", "credentials")
TAGS: list[Any] = ["destinations"]


def _tenant(who: Principal) -> str:
    if who.tenant_id is None:
        raise ApiError(
            422, "invalid_request", "tenant_id: an operator key names the tenant (?tenant_id=)", "tenant_id"
        )
    return who.tenant_id


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()
    settings = api.settings
    box = SecretBox(settings.secrets_key) if settings.secrets_key else None

    @router.post(PATH, status_code=201, tags=TAGS, response_model=None, responses=ERRORS)
    async def create_destination(request: Request, who: Auth) -> JSONResponse:
        """Add a destination: `{kind, name, config, credentials}`; answers it with a credentials
        fingerprint (the credentials themselves are never returned)."""
        await run_in_threadpool(api.admit, who)  # the key and its rate limits before the body
        raw = await request.body()
        return await run_in_threadpool(_create, who, raw)

    def _create(who: Principal, raw: bytes) -> JSONResponse:
        body = json_object_body(raw, BODY_FIELDS)
        with api.pool.connection() as conn:
            who.resolve(conn)
            tenant = _tenant(who)
            try:
                kind, name, config, credentials = check_destination(
                    body.get("kind"),
                    body.get("name"),
                    body.get("config"),
                    body.get("credentials"),
                    allow_private=settings.destinations_allow_private,
                )
                if credentials and box is None:
                    raise ApiError(
                        503, "unavailable", "destinations with credentials are not configured here"
                    )
                created = DestinationStore.on(conn).create(box, tenant, kind, name, config, credentials)
            except DestinationError as exc:
                raise ApiError(422, "invalid_request", str(exc), exc.field) from None
        return json_response(created.public(), 201, {"Location": f"{PATH}/{created.id}"})

    @router.get(PATH, tags=TAGS, response_model=None, responses=ERRORS)
    def list_destinations(who: Auth) -> JSONResponse:
        """The tenant's destinations (credentials shown as a fingerprint only)."""
        with api.pool.connection() as conn:
            who.resolve(conn)
            found = DestinationStore.on(conn).list(_tenant(who))
        return json_response({"data": [d.public() for d in found], "next_cursor": None})

    @router.get(PATH + "/{destination_id}", tags=TAGS, response_model=None, responses=ERRORS)
    def get_destination(destination_id: str, who: Auth) -> JSONResponse:
        with api.pool.connection() as conn:
            who.resolve(conn)
            found = DestinationStore.on(conn).get(destination_id, _tenant(who))
        if found is None:
            raise not_found("destination")
        return json_response(found.public())

    @router.delete(
        PATH + "/{destination_id}",
        status_code=204,
        tags=TAGS,
        response_model=None,
        responses={409: {"model": ErrorBody, "description": "feeds name it (destination_in_use)"}, **ERRORS},
    )
    def delete_destination(destination_id: str, who: Auth) -> Response:
        """Delete it (its credentials are wiped at once); an export still naming it fails as
        destination_not_found. 409 `destination_in_use`, naming them, while feeds name it."""
        api.admit(who)
        with api.pool.connection() as conn:
            who.resolve(conn)
            try:
                deleted = DestinationStore.on(conn).delete(destination_id, _tenant(who))
            except DestinationInUse as exc:
                raise ApiError(409, "destination_in_use", str(exc), "destination_id") from None
            if not deleted:
                raise not_found("destination")
        return Response(status_code=204)

    @router.post(PATH + "/{destination_id}/test", tags=TAGS, response_model=None, responses=ERRORS)
    def test(destination_id: str, who: Auth) -> JSONResponse:
        """Write, read back and delete a probe object: `{result: ok|unreachable|denied|not_found|invalid,
        message}`."""
        # Rate limited like every mutating route: each call connects to a host the tenant names.
        api.admit(who)
        with api.pool.connection() as conn:
            who.resolve(conn)
            try:
                found = DestinationStore.on(conn).for_writer(box, destination_id, _tenant(who))
            except DestinationError:
                raise not_found("destination") from None
        # Outside the pooled connection: a slow destination must not hold it.
        return json_response(
            test_destination(found, allow_private=settings.destinations_allow_private).as_json()
        )

    return router
