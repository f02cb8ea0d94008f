"""`GET /v1/exports/{id}/events`: Server-Sent Events — `progress` (at most once a second while
the status document changes), then one final event (`succeeded` with fresh links, `failed`,
`canceled`); `Last-Event-ID` resumes. The one async handler: a stream holds no thread while it
sleeps.

(No `from __future__ import annotations`: FastAPI resolves the handler's annotations.)"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from export_pipelines.api.auth import Auth, Principal
from export_pipelines.api.errors import ApiError
from export_pipelines.api.files import files_document
from export_pipelines.api.schemas import ERRORS, ExportId
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import API_VERSION

SSE_POLL_SECONDS = 1.0  # progress at most once a second
SSE_KEEPALIVE_SECONDS = 15.0


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()

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
        who: Auth,
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

    def _final_doc(loaded: dict[str, Any]) -> dict[str, Any]:
        doc = dict(loaded["doc"])
        if doc["status"] == "succeeded":
            try:
                files = files_document(api.links(loaded["row"]))
                doc["files"] = files["data"]
                doc["links"] = {**doc["links"], "manifest_url": files["manifest_url"]}
            except ApiError:
                doc["files"] = []
        return doc

    async def _stream(
        request: Request, who: Principal, export_id: str, loaded: dict[str, Any], resume: int
    ) -> AsyncIterator[bytes]:
        last_id = resume
        last_sent: str | None = None
        last_write = time.monotonic()
        while True:
            row, doc = loaded["row"], loaded["doc"]
            version = int(row["updated_at"].timestamp() * 1_000_000)
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
                loaded = await run_in_threadpool(api.load, who, export_id)
            except ApiError:
                return

    return router


def _event(name: str, event_id: int, data: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
