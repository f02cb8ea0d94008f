"""`GET /healthz` (the process is up) and `GET /readyz` (the database and S3 answer, each named).

/healthz runs on the event loop, not in the worker thread pool: it answers while every worker thread
waits on a slow dependency."""

from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from export_pipelines.api.errors import ApiError
from export_pipelines.api.schemas import Health
from export_pipelines.api.service import ExportApi
from export_pipelines.api.status import json_response
from export_pipelines.core.errors import ExportError
from export_pipelines.core.requests.request_reads import RequestReads


def router(api: ExportApi) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> dict[str, Any]:
        """The process is up."""
        return {"status": "ok", "checks": {}}

    @router.get(
        "/readyz",
        response_model=Health,
        tags=["health"],
        responses={503: {"model": Health, "description": "database or S3 not reachable"}},
    )
    def readyz() -> JSONResponse:
        """The database and S3 answer."""
        checks: dict[str, str] = {}
        try:
            with api.pool.connection() as conn:
                RequestReads.on(conn).check_readable()
            checks["database"] = "ok"
        except (ApiError, psycopg.Error) as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        try:
            with api.storage() as s3:
                s3.head_bucket(Bucket=api.bucket)
            checks["s3"] = "ok"
        except (ApiError, ClientError, BotoCoreError, ExportError) as exc:
            checks["s3"] = f"unavailable: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return json_response({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)

    return router
