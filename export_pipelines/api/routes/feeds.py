"""Feeds: a tenant's standing exports (docs/feeds.md). `POST /v1/feeds` (201), `GET /v1/feeds`,
`GET|PATCH|DELETE /v1/feeds/{id}`, `POST /v1/feeds/{id}/run` (202, the new delivery's status
document), `POST /v1/feeds/{id}/full-refresh` (202). Each delivery is an ordinary export: its status,
events, files, cancel are the exports' routes; `GET /v1/exports?feed_id=` lists them.

(No `from __future__ import annotations`: FastAPI resolves the handlers' annotations.)"""

from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from export_pipelines.api.auth import Auth, Principal
from export_pipelines.api.errors import ApiError, json_object_body, not_found
from export_pipelines.api.schemas import ERRORS, ErrorBody
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION, json_response, status_document
from export_pipelines.core.errors import DeliveryInProgress, Rejected
from export_pipelines.core.requests.feed_store import FIELDS, Feed, FeedStore, check_feed, start_delivery

BODY_FIELDS = frozenset({*FIELDS, "notify"} - {"webhook_url", "email"})


def _feed_doc(feed: Feed) -> dict[str, Any]:
    base = f"/{API_VERSION}/feeds/{feed.id}"
    return {
        **feed.document(),
        "object": "feed",
        "links": {
            "self": base,
            "run": f"{base}/run",
            "full_refresh": f"{base}/full-refresh",
            "deliveries": f"/{API_VERSION}/exports?feed_id={feed.id}",
        },
    }


def _body(raw: bytes, *, partial: bool) -> dict[str, Any]:
    body = json_object_body(raw, BODY_FIELDS)
    notify = body.pop("notify", None) or {}
    if not isinstance(notify, dict) or set(notify) - {"webhook_url", "email"}:
        raise ApiError(422, "invalid_request", "notify: must be an object {webhook_url?, email?}", "notify")
    for k in ("webhook_url", "email"):
        if k in notify or not partial:
            body[k] = notify.get(k) or None
    return body


def _rejected(exc: Rejected) -> ApiError:
    field = exc.field
    if field in ("webhook_url", "email"):
        field = f"notify.{field}"
    return ApiError(422, "invalid_request", str(exc), field)


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()
    allowlist = api.settings.webhook_allowlist

    def _on(who: Principal, work: Any) -> Any:
        with api.pool.connection() as conn:
            who.resolve(conn)
            if who.tenant_id is None:
                raise ApiError(
                    422, "invalid_request", "tenant_id: an operator key names the tenant", "tenant_id"
                )
            return work(conn, who.tenant_id)

    def _load(conn: psycopg.Connection[Any], tenant_id: str, feed_id: str) -> Feed:
        feed = FeedStore.on(conn).get(tenant_id, feed_id)
        if feed is None:
            raise not_found("feed")
        return feed

    @router.post(
        f"/{API_VERSION}/feeds", status_code=201, tags=["feeds"], response_model=None, responses=ERRORS
    )
    async def create_feed(request: Request, who: Auth) -> JSONResponse:
        """Create a feed: `{resource, format, compression?, columns?, filters?, frequency:
        hourly|daily|weekly|monthly|manual, mode?: incremental|full, notify?, destination_id?}`
        (`destination_id`: one of the tenant's destinations, which every delivery goes to)."""
        await run_in_threadpool(api.admit, who)  # the key and its rate limits before the body
        raw = await request.body()

        def work(conn: psycopg.Connection[Any], tenant_id: str) -> JSONResponse:
            body = _body(raw, partial=False)
            try:
                fields = check_feed(api.catalog, allowlist, {**body, "tenant_id": tenant_id})
                feed = FeedStore.on(conn).create(fields)  # the destination must be the tenant's
            except Rejected as exc:
                raise _rejected(exc) from None
            doc = _feed_doc(feed)
            return json_response(doc, 201, {"Location": doc["links"]["self"]})

        return await run_in_threadpool(_on, who, work)

    @router.get(f"/{API_VERSION}/feeds", tags=["feeds"], response_model=None, responses=ERRORS)
    def list_feeds(who: Auth) -> JSONResponse:
        """The tenant's feeds, oldest first."""
        return _on(
            who, lambda conn, t: json_response({"data": [_feed_doc(f) for f in FeedStore.on(conn).list(t)]})
        )

    @router.get(f"/{API_VERSION}/feeds/{{feed_id}}", tags=["feeds"], response_model=None, responses=ERRORS)
    def get_feed(feed_id: str, who: Auth) -> JSONResponse:
        return _on(who, lambda conn, t: json_response(_feed_doc(_load(conn, t, feed_id))))

    @router.patch(f"/{API_VERSION}/feeds/{{feed_id}}", tags=["feeds"], response_model=None, responses=ERRORS)
    async def update_feed(feed_id: str, request: Request, who: Auth) -> JSONResponse:
        """Change a feed's fields (the same checks as at creation)."""
        await run_in_threadpool(api.admit, who)  # the key and its rate limits before the body
        raw = await request.body()

        def work(conn: psycopg.Connection[Any], tenant_id: str) -> JSONResponse:
            feed = _load(conn, tenant_id, feed_id)
            changes = _body(raw, partial=True)
            merged = {k: v for k, v in feed.document().items() if k in FIELDS}
            merged.update({"webhook_url": feed.webhook_url, "email": feed.email, **changes})
            try:
                fields = check_feed(api.catalog, allowlist, {**merged, "tenant_id": tenant_id})
                updated = FeedStore.on(conn).update(tenant_id, feed_id, {k: fields[k] for k in changes})
            except Rejected as exc:
                raise _rejected(exc) from None
            if updated is None:
                raise not_found("feed")
            return json_response(_feed_doc(updated))

        return await run_in_threadpool(_on, who, work)

    @router.delete(
        f"/{API_VERSION}/feeds/{{feed_id}}",
        status_code=204,
        tags=["feeds"],
        response_model=None,
        responses=ERRORS,
    )
    def delete_feed(feed_id: str, who: Auth) -> Response:
        """Delete the feed; its deliveries stay exports (their files expire as any export's)."""
        api.admit(who)

        def work(conn: psycopg.Connection[Any], tenant_id: str) -> Response:
            if not FeedStore.on(conn).delete(tenant_id, feed_id):
                raise not_found("feed")
            return Response(status_code=204)

        return _on(who, work)

    def _deliver(feed_id: str, who: Principal, full_refresh: bool) -> JSONResponse:
        api.admit(who)

        def work(conn: psycopg.Connection[Any], tenant_id: str) -> JSONResponse:
            feed = _load(conn, tenant_id, feed_id)
            try:
                row = start_delivery(conn, feed, full_refresh=full_refresh)
            except DeliveryInProgress as exc:
                raise ApiError(409, "delivery_in_progress", str(exc), headers={"Retry-After": "30"}) from None
            doc = status_document(row, None)
            return json_response(doc, 202, {"Location": doc["links"]["self"]})

        answer = _on(who, work)
        api.doorbell.ring()  # committed: the submitter starts the delivery now
        return answer

    @router.post(
        f"/{API_VERSION}/feeds/{{feed_id}}/run",
        status_code=202,
        tags=["feeds"],
        response_model=None,
        responses={409: {"model": ErrorBody, "description": "a delivery is in progress"}, **ERRORS},
    )
    def run_feed(feed_id: str, who: Auth) -> JSONResponse:
        """A delivery now: the new delivery's export status document."""
        return _deliver(feed_id, who, full_refresh=False)

    @router.post(
        f"/{API_VERSION}/feeds/{{feed_id}}/full-refresh",
        status_code=202,
        tags=["feeds"],
        response_model=None,
        responses={409: {"model": ErrorBody, "description": "a delivery is in progress"}, **ERRORS},
    )
    def full_refresh(feed_id: str, who: Auth) -> JSONResponse:
        """The feed's next delivery is full (every row, replace what you hold), and it starts now."""
        return _deliver(feed_id, who, full_refresh=True)

    return router
