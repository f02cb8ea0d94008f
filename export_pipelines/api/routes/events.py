"""`GET /v1/exports/{id}/events`: Server-Sent Events — `progress` (at most once a second while
the status document changes), then one final event (`succeeded` with fresh links, `failed`,
`canceled`); `Last-Event-ID` resumes. The one async handler: a stream holds no thread while it
sleeps.

A browser's EventSource cannot send `Authorization`: it asks `POST …/events/token` for a
short-lived token of this one stream and opens `…/events?access_token=…` (stream_tokens.py).

(No `from __future__ import annotations`: FastAPI resolves the handler's annotations.)"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from export_pipelines.api.auth import Auth, Principal, principal
from export_pipelines.api.errors import ApiError
from export_pipelines.api.routes.files import DEFAULT_FILES_PAGE, files_document
from export_pipelines.api.schemas import ERRORS, ExportId, StreamToken
from export_pipelines.api.service import ExportApi, Loaded
from export_pipelines.api.status import API_VERSION, iso_unix, json_response
from export_pipelines.api.stream_tokens import MAX_TOKEN_CHARS, TokenPrincipal, mint

SSE_POLL_SECONDS = 1.0  # progress at most once a second
SSE_KEEPALIVE_SECONDS = 15.0


async def stream_principal(
    request: Request,
    export_id: ExportId,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    tenant_id: Annotated[
        str | None,
        Query(max_length=256, description="operator keys only: act for this tenant"),
    ] = None,
    access_token: Annotated[
        str | None,
        Query(
            max_length=MAX_TOKEN_CHARS,
            description="for clients that cannot send Authorization (a browser's EventSource): a "
            "token from POST /v1/exports/{export_id}/events/token, valid for this export only",
        ),
    ] = None,
) -> Principal:
    """The bearer key when there is one; else the event-stream token of this export."""
    if authorization or not access_token:
        return await principal(request, authorization, tenant_id)
    return TokenPrincipal(request, access_token, export_id, request.app.state.api.token_secret)


StreamAuth = Annotated[Principal, Depends(stream_principal)]


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()

    @router.post(
        f"/{API_VERSION}/exports/{{export_id}}/events/token",
        status_code=201,
        tags=["exports"],
        response_model=None,
        responses={201: {"model": StreamToken}, **ERRORS},
    )
    def create_events_token(export_id: ExportId, who: Auth) -> JSONResponse:
        """A short-lived token that opens this export's event stream without an Authorization
        header (`GET …/events?access_token=…`), for a browser's EventSource."""
        doc = api.load(who, export_id, position=False).doc
        api.rate_limits.check(who)
        token, expires = mint(who, doc["id"], api.token_secret)
        body = {
            "token": token,
            "expires_at": iso_unix(expires),
            "url": f"{doc['links']['events']}?access_token={token}",
        }
        return json_response(body, 201, {"Cache-Control": "no-store"})

    @router.get(
        f"/{API_VERSION}/exports/{{export_id}}/events",
        tags=["exports"],
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "Server-Sent Events: `progress` (at most 1/s), then one of `succeeded`, "
                "`failed`, `canceled` (the status document; `files` with fresh links on success)",
                "content": {"text/event-stream": {}},
            },
            **ERRORS,
        },
    )
    async def events(
        request: Request,
        export_id: ExportId,
        who: StreamAuth,
        last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> StreamingResponse:
        """Live progress of one export. Reconnect with Last-Event-ID to continue."""
        first = await run_in_threadpool(api.load, who, export_id)
        try:
            resume = int(last_event_id) if last_event_id else 0
        except ValueError:
            resume = 0
        return StreamingResponse(
            _stream(request, who, export_id, first, resume),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _final_doc(loaded: Loaded) -> dict[str, Any]:
        doc = dict(loaded.doc)
        if doc["status"] == "succeeded":
            try:
                files = files_document(*api.links(loaded.row, limit=DEFAULT_FILES_PAGE))
                doc["files"] = files["data"]
                doc["links"] = {**doc["links"], "manifest_url": files["manifest_url"]}
            except ApiError:
                doc["files"] = []
        return doc

    async def _stream(
        request: Request, who: Principal, export_id: str, loaded: Loaded, resume: int
    ) -> AsyncIterator[bytes]:
        last_id = resume
        last_sent: str | None = None
        last_write = time.monotonic()
        while True:
            row, doc = loaded.row, loaded.doc
            version = int((row.updated_at or row.created_at).timestamp() * 1_000_000)
            final = doc["status"] in ("succeeded", "failed", "canceled") or (doc["status"] == "expired")
            if final:
                if resume and resume >= version:
                    return  # the client saw this final event before it reconnected
                name = doc["status"] if doc["status"] != "expired" else "succeeded"
                data = await run_in_threadpool(_final_doc, loaded)
                yield _event(name, max(version, last_id + 1), data)
                return
            payload = json.dumps(doc, sort_keys=True)
            if payload != last_sent:
                last_id = max(version, last_id + 1)
                yield _event("progress", last_id, doc)
                last_sent = payload
                last_write = time.monotonic()
            elif time.monotonic() - last_write > SSE_KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                last_write = time.monotonic()
            await asyncio.sleep(SSE_POLL_SECONDS)
            if await request.is_disconnected():
                return
            try:
                # The key is checked again on every poll: revoking it ends the stream.
                loaded = await run_in_threadpool(api.load, who, export_id, recheck=True)
            except ApiError:
                return

    return router


def _event(name: str, event_id: int, data: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
