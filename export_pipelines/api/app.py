"""`create_app(settings)`: the export API (docs/api.md) — the FastAPI app,
its error answers and the request log, wired to one router per resource (routes/):

health.py (/healthz, /readyz) · create.py (POST /v1/exports) · exports.py (status document, list)
· files.py (files, /files/{n}, manifest) · events.py (SSE, and its token) · cancel.py (cancel,
delete) · catalog.py (GET /v1/resources) · settings.py (/v1/notify-settings) · page.py (the
/exports web page). auth.py is who is calling, stream_tokens.py the event-stream tokens; status.py
the status document; service.py the shared state; db.py the connection pool.

Thin on purpose: every handler is a call or two of core's stores on a connection lent from a small
pool, or a presign; no SQL text here, nothing imports Dagster or launches a run. Handlers are plain
`def` functions, run in Starlette's thread pool; the SSE stream is the one async handler.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from export_pipelines.api.auth import RequestLog, configure_request_log
from export_pipelines.api.db import ConnectionPool
from export_pipelines.api.errors import ApiError, error_response, export_error_response
from export_pipelines.api.metrics import MetricsMiddleware
from export_pipelines.api.rate_limits import OverLimitGate
from export_pipelines.api.routes import (
    cancel,
    catalog,
    create,
    destinations,
    events,
    exports,
    feeds,
    files,
    health,
    page,
    signing_keys,
)
from export_pipelines.api.routes import docs as docs_pages
from export_pipelines.api.routes import settings as notify_settings
from export_pipelines.api.server import BodyLimit
from export_pipelines.api.service import ExportApi
from export_pipelines.core.errors import ExportError
from export_pipelines.settings import Settings

log = logging.getLogger("export_pipelines.api")


def create_app(
    settings: Settings | None = None, *, pool: ConnectionPool | None = None, workers: int = 1
) -> FastAPI:
    settings = settings or Settings.from_env()
    api = ExportApi(settings, pool, workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        freeze_startup_objects()
        yield
        api.doorbell.close()
        api.pool.close()

    title = "export_pipelines export API"
    app = FastAPI(
        lifespan=lifespan,
        # /docs and /redoc are served by routes/docs.py, from the package's own files (no CDN).
        docs_url=None,
        redoc_url=None,
        title=title,
        version="1.0.0",
        description=(
            "Tenant exports of PostgreSQL data to S3 files. Authenticate with `Authorization: Bearer "
            "<api key>` (`export-pipelines api-key create --tenant T`). Errors are "
            '`{"error": {"code", "message", "field"?}}`.'
        ),
    )
    app.state.api = api
    # Outermost last: the log sees every answer, the 413 of the body limit and the gate's 429 included.
    app.add_middleware(OverLimitGate, limits=api.rate_limits)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(RequestLog)
    app.add_middleware(MetricsMiddleware)  # the outermost: it sees the route the router matched
    add_error_handlers(app)
    # The order of the original single module, so /openapi.json lists the paths as before.
    for module in (
        health,
        create,
        exports,
        files,
        events,
        cancel,
        catalog,
        notify_settings,
        feeds,
        signing_keys,
        destinations,
    ):
        app.include_router(module.router(api))
    app.include_router(page.router())
    app.include_router(docs_pages.router(title))
    return app


def freeze_startup_objects() -> None:
    """Move everything the imports and the app built into the collector's permanent generation.

    A full (oldest-generation) collection walks every tracked object: with FastAPI, pydantic, boto3
    and psycopg loaded that is a million objects and ~200 ms with the GIL held, during which no
    request of the process is answered (the API's p99 at 400 req/s was that pause). Frozen objects
    are never walked again; what requests create is still collected as usual."""
    # Loaded lazily by the first /files call otherwise, after the freeze.
    import boto3  # noqa: F401
    import botocore.client  # noqa: F401

    gc.collect()
    gc.freeze()


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers `{"error": {"code", "message", "field"?}}` (docs/api.md)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header", "body")]
        field = ".".join(loc) or None
        message = f"{field}: {first.get('msg', 'invalid')}" if field else str(first.get("msg", "invalid"))
        return error_response(422, "invalid_request", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers=exc.headers
        )

    @app.exception_handler(ClientError)
    @app.exception_handler(BotoCoreError)
    async def _s3(request: Request, exc: Exception) -> JSONResponse:
        log.warning("storage error: %s", exc)
        return error_response(
            503, "storage_unavailable", "storage is not reachable; retry later", headers={"Retry-After": "5"}
        )

    @app.exception_handler(ExportError)
    async def _export_error(request: Request, exc: ExportError) -> JSONResponse:
        answer = export_error_response(exc)
        if answer is not None:
            return answer
        log.warning("service error: %s", exc)
        return error_response(503, exc.code if exc.code != "internal" else "unavailable", str(exc))

    @app.exception_handler(psycopg.OperationalError)
    async def _db(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database error: %s", exc)
        return error_response(
            503, "database_unavailable", "the database is not reachable", headers={"Retry-After": "5"}
        )


def app_from_env() -> FastAPI:
    """The app of `export-pipelines serve --workers N`: each worker process reads the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    configure_request_log()
    # More than one worker answers (the token secret must be shared: EXPORT_API_TOKEN_SECRET).
    return create_app(Settings.from_env(), workers=2)
