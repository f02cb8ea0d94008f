"""`create_app(settings)`: the export API (DESIGN §3.7, README "Export API").

Thin on purpose: every handler is a few short statements on export_requests (through a small
connection pool) or a presign; nothing here imports Dagster or launches a run. Handlers are plain
`def` functions, run in Starlette's thread pool; the SSE stream is the one async handler.

(No `from __future__ import annotations`: FastAPI resolves the handlers' annotations, and
`Auth` / `ExportId` are local to `create_app`.)
"""

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from psycopg.types.json import Jsonb
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from export_pipelines.api.db import ConnectionPool
from export_pipelines.api.errors import ApiError, error_response, insert_error, not_found
from export_pipelines.api.schemas import (
    ACTIVE_STATUSES,
    CREATE_BODY_SCHEMA,
    FINAL_STATUSES,
    STATUSES,
    ErrorBody,
    ExportList,
    ExportStatus,
    FileList,
    Health,
    create_body_schema,
)
from export_pipelines.core.api_keys import ApiKey, lookup_key
from export_pipelines.core.catalog import Catalog, load_catalog
from export_pipelines.core.delivery import webhook_payload
from export_pipelines.core.errors import ExportError, Rejected
from export_pipelines.core.layout import ExportLocation
from export_pipelines.core.links import Link, fresh_links, read_manifest
from export_pipelines.core.request import build_request
from export_pipelines.core.request_store import check_request_fields, is_request_id
from export_pipelines.core.s3 import delete_prefix, make_s3_client
from export_pipelines.settings import Settings

log = logging.getLogger("export_pipelines.api")

API_VERSION = "v1"
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100
DEFAULT_LINK_HOURS = 24
MAX_IDEMPOTENCY_KEY_CHARS = 255
SSE_POLL_SECONDS = 1.0  # progress at most once a second
SSE_KEEPALIVE_SECONDS = 15.0
MAX_ERROR_MESSAGE_CHARS = 500
BODY_FIELDS = frozenset(CREATE_BODY_SCHEMA["properties"])
NOTIFY_FIELDS = frozenset({"webhook_url", "email"})

ERRORS = {
    401: {"model": ErrorBody, "description": "missing, unknown or revoked API key"},
    404: {"model": ErrorBody, "description": "no such export (or another tenant's)"},
    422: {"model": ErrorBody, "description": "invalid request; `field` names the field"},
    503: {"model": ErrorBody, "description": "database or storage unavailable"},
}


# --- the principal ------------------------------------------------------------------------------


class Principal:
    """Who is calling: a tenant key (scope = its tenant) or an operator key (scope = the tenant it
    acts for, or None: every tenant).

    The key is looked up by `resolve`, on the connection the handler borrows anyway, so a request
    costs one pool checkout and one thread hop, not two."""

    def __init__(self, request: Request, token: str, acting_for: str | None) -> None:
        self.request = request
        self.token = token
        self.acting_for = acting_for
        self._key: ApiKey | None = None

    def resolve(self, conn: psycopg.Connection[Any]) -> "Principal":
        if self._key is None:
            key = lookup_key(conn, self.token)
            if key is None:
                raise ApiError(
                    401,
                    "unauthenticated",
                    "unknown or revoked API key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if self.acting_for is not None and not key.is_operator and self.acting_for != key.tenant_id:
                # A tenant key names its tenant already; another tenant's exports do not exist for it.
                raise not_found("tenant")
            self._key = key
            self.request.state.principal = self
        return self

    @property
    def key(self) -> ApiKey:
        assert self._key is not None, "resolve() first"
        return self._key

    @property
    def tenant_id(self) -> str | None:
        return self.key.tenant_id if not self.key.is_operator else self.acting_for

    @property
    def operator(self) -> bool:
        return self.key.is_operator


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def _percent(row: dict[str, Any]) -> float | None:
    if row["status"] == "succeeded":
        return 100.0
    total = row.get("rows_total")
    if total is None:
        return None
    if total <= 0:
        return 100.0 if row["status"] in FINAL_STATUSES else 0.0
    return round(min(100.0, 100.0 * (row.get("rows_exported") or 0) / total), 1)


def _error(row: dict[str, Any]) -> dict[str, str] | None:
    status = row["status"]
    code = row.get("error_code")
    if status == "canceled":
        code = code or "canceled"
    elif status != "failed" and not code:
        return None
    code = code or "internal"
    message = (row.get("error") or "").strip()
    if not message:
        message = {"canceled": "the export was canceled"}.get(code, "the export failed")
    return {"code": code, "message": message[:MAX_ERROR_MESSAGE_CHARS]}


def status_document(row: dict[str, Any], queue_position: int | None = None) -> dict[str, Any]:
    rid = str(row["id"])
    base = f"/{API_VERSION}/exports/{rid}"
    columns = row.get("columns")
    return {
        "id": rid,
        "object": "export",
        "tenant_id": row["tenant_id"],
        "resource": row["resource"],
        "format": row["format"],
        "compression": row.get("compression"),
        "columns": list(columns) if columns is not None else None,
        "filters": row.get("filters") if isinstance(row.get("filters"), dict | list | str | int) else {},
        "status": row["status"] if row["status"] in STATUSES else "failed",
        "attempt": row.get("attempt") or 1,
        "rows_total": row.get("rows_total"),
        "rows_exported": row.get("rows_exported") or 0,
        "bytes_written": row.get("bytes_written") or 0,
        "percent": _percent(row),
        "queue_position": queue_position,
        "created_at": _iso(row["created_at"]),
        "queued_at": _iso(row.get("queued_at")),
        "started_at": _iso(row.get("started_at")),
        "completed_at": _iso(row.get("completed_at")),
        "updated_at": _iso(row.get("updated_at") or row["created_at"]),
        "expires_at": _iso(row.get("expires_at")),
        "cancel_requested_at": _iso(row.get("cancel_requested_at")),
        "error": _error(row),
        "links": {
            "self": base,
            "files": f"{base}/files",
            "manifest": f"{base}/manifest",
            "events": f"{base}/events",
            "cancel": f"{base}/cancel",
        },
    }


def _etag(doc: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return f'"{digest[:32]}"'


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(doc, status_code=status, headers=headers)


# The queue position of a waiting row, as the fair queue launches: round robin across tenants in
# creation order. If the row is its tenant's k-th waiting row, the rows ahead are its tenant's k-1
# earlier ones, plus from every other tenant t its first min(n_t, k-1) rows, plus t's k-th row when
# that was created earlier (that is, when t has at least k rows created before this one). One
# hash aggregate over the waiting rows, no sort (QUEUE_POSITION_REFERENCE_SQL, a window function
# that ranks every row, is the definition the tests compare it with).
QUEUE_POSITION_SQL = """
WITH me AS (SELECT tenant_id, created_at, id FROM export_requests WHERE id = %(id)s),
per AS (
    SELECT r.tenant_id,
           count(*) AS n,
           count(*) FILTER (WHERE (r.created_at, r.id) < (me.created_at, me.id)) AS before
    FROM export_requests r, me
    WHERE r.status IN ('pending', 'queued')
    GROUP BY r.tenant_id
), mine AS (SELECT per.before + 1 AS k FROM per, me WHERE per.tenant_id = me.tenant_id)
SELECT coalesce(sum(CASE WHEN per.tenant_id = me.tenant_id THEN per.before
                         ELSE least(per.n, mine.k - 1) + (per.before >= mine.k)::int END), 0)::bigint AS ahead
FROM per, me, mine
"""
QUEUE_POSITION_REFERENCE_SQL = """
WITH waiting AS (
    SELECT id, created_at,
           row_number() OVER (PARTITION BY tenant_id ORDER BY created_at, id) AS rank
    FROM export_requests WHERE status IN ('pending', 'queued')
), me AS (SELECT rank, created_at, id FROM waiting WHERE id = %(id)s)
SELECT count(*) AS ahead FROM waiting, me
WHERE waiting.id <> me.id
  AND (waiting.rank < me.rank
       OR (waiting.rank = me.rank AND (waiting.created_at, waiting.id) < (me.created_at, me.id)))
"""


def _cursor_encode(row: dict[str, Any]) -> str:
    raw = json.dumps([row["created_at"].isoformat(), str(row["id"])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_decode(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, rid = json.loads(raw)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not is_request_id(rid):
            raise ValueError
        return when, rid
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise ApiError(
            422, "invalid_request", "cursor: not a cursor this API gave (use next_cursor as is)", "cursor"
        ) from None


def _fingerprint(tenant_id: str, body: Any) -> str:
    canonical = json.dumps([tenant_id, body], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ExportApi:
    """The handlers' shared state: settings, catalog, pool, S3 client."""

    def __init__(self, settings: Settings, pool: ConnectionPool | None = None) -> None:
        self.settings = settings
        self.catalog: Catalog = load_catalog(settings.catalog_path)
        self.pool = pool or ConnectionPool(settings.require_source_database_url())
        self._s3: Any = None

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = make_s3_client(**self.settings.s3_client_options())
        return self._s3

    @property
    def bucket(self) -> str:
        return self.settings.require_bucket()

    # -- reads --

    def load(self, principal: Principal, export_id: str, *, position: bool = True) -> dict[str, Any]:
        with self.pool.connection() as conn:
            principal.resolve(conn)
            if not is_request_id(export_id):
                raise not_found()
            row = conn.execute(
                "SELECT * FROM export_requests WHERE id = %s AND (%s::text IS NULL OR tenant_id = %s)",
                [export_id, principal.tenant_id, principal.tenant_id],
            ).fetchone()
            if row is None:
                raise not_found()
            queue_position = None
            if position and row["status"] in ("pending", "queued"):
                got = conn.execute(QUEUE_POSITION_SQL, {"id": row["id"]}).fetchone()
                queue_position = int(got["ahead"]) if got else None
        return {"row": row, "doc": status_document(row, queue_position)}

    def links(self, row: dict[str, Any]) -> list[Link]:
        status = row["status"]
        if status == "expired":
            raise ApiError(410, "export_expired", "the export's files were deleted (status expired)")
        if status != "succeeded":
            raise ApiError(
                409, "export_not_ready", f"the export is {status}; files exist once it has succeeded"
            )
        hours: float = row.get("link_expiry_hours") or DEFAULT_LINK_HOURS
        expires_at = row.get("expires_at")
        if expires_at is not None:
            left = (expires_at - datetime.now(UTC)).total_seconds() / 3600
            if left <= 1 / 60:
                raise ApiError(410, "export_expired", "the export's files have expired")
            hours = min(hours, left)
        try:
            location = ExportLocation(self.settings.prefix, row["tenant_id"], row["resource"], str(row["id"]))
            return fresh_links(self.s3, self.bucket, location, hours)
        except Rejected as exc:
            raise ApiError(410, "export_expired", str(exc)) from exc


def _files_document(links: list[Link]) -> dict[str, Any]:
    manifest = links[0]
    return {
        "data": [
            {
                "number": link.number,
                "filename": link.filename,
                "rows": link.rows,
                "bytes": link.bytes,
                "sha256": link.sha256,
                "url": link.url,
                "expires_at": _iso(link.expires_at),
            }
            for link in links[1:]
        ],
        "next_cursor": None,
        "manifest_url": manifest.url,
        "expires_at": _iso(manifest.expires_at),
    }


# --- the request log ------------------------------------------------------------------------------


class RequestLog:
    """One log line per request (pure ASGI, so streaming responses are not buffered): method, path,
    status, milliseconds, the key, and for operator keys which tenant they acted for."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            principal: Principal | None = scope.get("state", {}).get("principal")
            who = "-"
            if principal is not None:
                key = principal.key
                who = f"key={key.id}({key.key_prefix}) tenant={principal.tenant_id or '*'}"
                if principal.operator:
                    acting = principal.tenant_id or "*"
                    who += f" OPERATOR key {key.name or key.id!r} acting for tenant {acting}"
            log.info(
                "%s %s %s %.1fms %s",
                scope["method"],
                scope["path"],
                status_holder["status"],
                (time.perf_counter() - started) * 1000,
                who,
            )


# --- the app --------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, *, pool: ConnectionPool | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    api = ExportApi(settings, pool)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        api.pool.close()

    app = FastAPI(
        lifespan=lifespan,
        title="export_pipelines export API",
        version="1.0.0",
        description=(
            "Tenant exports of PostgreSQL data to S3 files. Authenticate with `Authorization: Bearer "
            "<api key>` (`export-pipelines api-key create --tenant T`). Errors are "
            '`{"error": {"code", "message", "field"?}}`.'
        ),
    )
    app.state.api = api
    app.add_middleware(RequestLog)

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
        codes = {404: "not_found", 405: "method_not_allowed"}
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
        if isinstance(exc, Rejected):
            return error_response(422, "invalid_request", str(exc), exc.field)
        log.warning("service error: %s", exc)
        return error_response(503, exc.code if exc.code != "internal" else "unavailable", str(exc))

    @app.exception_handler(psycopg.OperationalError)
    async def _db(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database error: %s", exc)
        return error_response(
            503, "database_unavailable", "the database is not reachable", headers={"Retry-After": "5"}
        )

    async def principal(
        request: Request,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
        tenant_id: Annotated[
            str | None,
            Query(max_length=256, description="operator keys only: act for this tenant"),
        ] = None,
    ) -> Principal:
        token = ""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer":
                token = ""
        if not token.strip():
            raise ApiError(
                401,
                "unauthenticated",
                "send Authorization: Bearer <api key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Principal(request, token.strip(), tenant_id)

    Auth = Annotated[Principal, Depends(principal)]
    ExportId = Annotated[str, Path(description="the export id (a UUID)", max_length=64)]

    # -- health --

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> dict[str, Any]:
        """The process is up."""
        return {"status": "ok", "checks": {}}

    @app.get(
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
                conn.execute("SELECT 1 FROM export_requests LIMIT 1")
            checks["database"] = "ok"
        except (ApiError, psycopg.Error) as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        try:
            api.s3.head_bucket(Bucket=api.bucket)
            checks["s3"] = "ok"
        except (ClientError, BotoCoreError, ExportError) as exc:
            checks["s3"] = f"unavailable: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return _json({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)

    # -- create --

    @app.post(
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
        raw = await request.body()
        return await run_in_threadpool(_create, who, raw, idempotency_key)

    def _create(who: Principal, raw: bytes, idempotency_key: str | None) -> JSONResponse:
        with api.pool.connection() as conn:
            who.resolve(conn)
            return _create_on(conn, who, raw, idempotency_key)

    def _create_on(
        conn: psycopg.Connection[Any], who: Principal, raw: bytes, idempotency_key: str | None
    ) -> JSONResponse:
        try:
            body = json.loads(raw or b"null")
        except (ValueError, RecursionError):
            raise ApiError(422, "invalid_request", "body: not valid JSON", "body") from None
        if not isinstance(body, dict):
            raise ApiError(422, "invalid_request", "body: must be a JSON object", "body")
        unknown = sorted(str(k) for k in body if k not in BODY_FIELDS)
        if unknown:
            raise ApiError(
                422,
                "invalid_request",
                f"{unknown[0]}: unknown field; allowed: {', '.join(sorted(BODY_FIELDS - {'tenant_id'}))}",
                unknown[0],
            )
        tenant_id = who.tenant_id
        if "tenant_id" in body:
            if not who.operator:
                raise ApiError(422, "invalid_request", "tenant_id: set by the API key; omit it", "tenant_id")
            tenant_id = body["tenant_id"]
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
        try:
            # The request sensor's own checks, so an app hears the same message from both doors.
            check_request_fields(api.catalog, settings.webhook_allowlist, **fields)
            build_request(
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
        fingerprint = _fingerprint(tenant_id, body)
        params = {
            **fields,
            "filters": json.dumps(fields["filters"]),
            "id": uuid.uuid4(),
            "idem": idempotency_key,
            "fp": fingerprint,
            "hours": link_hours,
            "max_rows": max_rows,
        }
        for _ in range(2):
            try:
                result = _insert(conn, tenant_id, idempotency_key, fingerprint, params)
                break
            except psycopg.errors.UniqueViolation:
                # Another door (SQL) inserted the same key between our look and our insert: look again.
                continue
        else:
            raise ApiError(409, "idempotency_in_flight", "a request with this Idempotency-Key is in flight")
        row, replayed = result
        doc = status_document(row, None)
        headers = {"Location": doc["links"]["self"]}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return _json(doc, 202, headers)

    def _insert(
        conn: psycopg.Connection[Any],
        tenant_id: str,
        idempotency_key: str | None,
        fingerprint: str,
        params: dict[str, Any],
    ) -> tuple[dict[str, Any], bool]:
        try:
            with conn.transaction():
                if idempotency_key is not None:
                    got = conn.execute(
                        "SELECT pg_try_advisory_xact_lock(hashtext('export_api_idempotency'), "
                        "hashtext(%s || E'\\n' || %s)) AS ok",
                        [tenant_id, idempotency_key],
                    ).fetchone()
                    if not got or not got["ok"]:
                        raise ApiError(
                            409,
                            "idempotency_in_flight",
                            "a request with this Idempotency-Key is still being created; retry in a moment",
                            "Idempotency-Key",
                            {"Retry-After": "1"},
                        )
                    first = conn.execute(
                        "SELECT * FROM export_requests WHERE tenant_id = %s AND idempotency_key = %s",
                        [tenant_id, idempotency_key],
                    ).fetchone()
                    if first is not None:
                        if first.get("idempotency_fingerprint") != fingerprint:
                            raise ApiError(
                                422,
                                "idempotency_conflict",
                                "Idempotency-Key: already used with a different request body",
                                "Idempotency-Key",
                            )
                        return first, True
                row = conn.execute(
                    """
                    INSERT INTO export_requests
                        (id, tenant_id, resource, format, compression, filters, columns, webhook_url,
                         email, idempotency_key, idempotency_fingerprint, link_expiry_hours,
                         max_rows_per_file)
                    VALUES (%(id)s, %(tenant_id)s, %(resource)s, %(format)s, %(compression)s,
                            %(filters)s::jsonb, %(columns)s, %(webhook_url)s, %(email)s, %(idem)s,
                            %(fp)s, %(hours)s, %(max_rows)s)
                    RETURNING *
                    """,
                    params,
                ).fetchone()
                assert row is not None
                return row, False
        except psycopg.errors.UniqueViolation:
            raise
        except psycopg.Error as exc:
            mapped = insert_error(exc)
            if mapped is None:
                raise
            raise mapped from None

    # -- read --

    @app.get(
        f"/{API_VERSION}/exports/{{export_id}}",
        tags=["exports"],
        response_model=None,
        responses={
            200: {"model": ExportStatus},
            304: {"description": "not modified (If-None-Match)"},
            **ERRORS,
        },
    )
    def get_export(
        export_id: ExportId,
        who: Auth,
        if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Response:
        """The export's status document: status, progress, queue position, timestamps, error."""
        doc = api.load(who, export_id)["doc"]
        etag = _etag(doc)
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if if_none_match and etag in [t.strip().removeprefix("W/") for t in if_none_match.split(",")]:
            return Response(status_code=304, headers=headers)
        return _json(doc, 200, headers)

    @app.get(
        f"/{API_VERSION}/exports",
        tags=["exports"],
        response_model=None,
        responses={200: {"model": ExportList}, **ERRORS},
    )
    def list_exports(
        who: Auth,
        status: Annotated[
            str | None, Query(description=f"one of: {', '.join(STATUSES)}", max_length=32)
        ] = None,
        cursor: Annotated[
            str | None, Query(description="next_cursor of the previous page", max_length=512)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT,
    ) -> JSONResponse:
        """The tenant's exports, newest first, keyset-paginated on (created_at, id)."""
        with api.pool.connection() as conn:
            who.resolve(conn)
            if status is not None and status not in STATUSES:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"status: {status!r} is not a status; allowed: {', '.join(STATUSES)}",
                    "status",
                )
            after = _cursor_decode(cursor) if cursor else None
            rows = conn.execute(
                """
                SELECT * FROM export_requests
                WHERE (%(t)s::text IS NULL OR tenant_id = %(t)s)
                  AND (%(s)s::text IS NULL OR status = %(s)s)
                  AND (%(c)s::timestamptz IS NULL OR (created_at, id) < (%(c)s, %(i)s::uuid))
                ORDER BY created_at DESC, id DESC
                LIMIT %(n)s
                """,
                {
                    "t": who.tenant_id,
                    "s": status,
                    "c": after[0] if after else None,
                    "i": after[1] if after else None,
                    "n": limit + 1,
                },
            ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return _json(
            {
                "data": [status_document(r) for r in rows],
                "next_cursor": _cursor_encode(rows[-1]) if more else None,
            }
        )

    # -- files --

    @app.get(
        f"/{API_VERSION}/exports/{{export_id}}/files",
        tags=["files"],
        response_model=None,
        responses={
            200: {"model": FileList},
            409: {"model": ErrorBody, "description": "not succeeded (yet)"},
            410: {"model": ErrorBody, "description": "the files were deleted"},
            **ERRORS,
        },
    )
    def list_files(export_id: ExportId, who: Auth) -> JSONResponse:
        """The manifest's files in order (numbered from 1), each with a fresh presigned URL."""
        row = api.load(who, export_id, position=False)["row"]
        return _json(_files_document(api.links(row)), headers={"Cache-Control": "no-store"})

    @app.get(
        f"/{API_VERSION}/exports/{{export_id}}/files/{{number}}",
        tags=["files"],
        response_class=RedirectResponse,
        status_code=302,
        responses={
            302: {"description": "redirect to a fresh presigned URL"},
            409: {"model": ErrorBody, "description": "not succeeded (yet)"},
            410: {"model": ErrorBody, "description": "the files were deleted"},
            **ERRORS,
        },
    )
    def download_file(
        export_id: ExportId, number: Annotated[int, Path(ge=1, le=1_000_000)], who: Auth
    ) -> RedirectResponse:
        """302 to a fresh presigned URL of file `number` (from 1, manifest order)."""
        row = api.load(who, export_id, position=False)["row"]
        links = api.links(row)
        if number >= len(links):
            raise not_found("file")
        return RedirectResponse(links[number].url, status_code=302, headers={"Cache-Control": "no-store"})

    @app.get(
        f"/{API_VERSION}/exports/{{export_id}}/manifest",
        tags=["files"],
        response_model=None,
        responses={
            200: {"description": "the export's manifest.json", "content": {"application/json": {}}},
            409: {"model": ErrorBody, "description": "not succeeded (yet)"},
            410: {"model": ErrorBody, "description": "the files were deleted"},
            **ERRORS,
        },
    )
    def get_manifest(export_id: ExportId, who: Auth) -> JSONResponse:
        """The export's manifest.json (files, rows, bytes, sha256, columns and types, snapshot)."""
        row = api.load(who, export_id, position=False)["row"]
        api.links(row)  # same status checks as /files
        location = ExportLocation(settings.prefix, row["tenant_id"], row["resource"], str(row["id"]))
        try:
            return _json(read_manifest(api.s3, api.bucket, location))
        except Rejected as exc:
            raise ApiError(410, "export_expired", str(exc)) from exc

    # -- events --

    @app.get(
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
                files = _files_document(api.links(loaded["row"]))
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

    # -- cancel and delete --

    @app.post(
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
        return _json(doc, 202, {"Location": doc["links"]["self"]})

    @app.delete(
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
            location = ExportLocation(settings.prefix, row["tenant_id"], row["resource"], str(row["id"]))
            delete_prefix(api.s3, api.bucket, location.folder)
            with api.pool.connection() as conn:
                conn.execute(
                    "UPDATE export_requests SET status = 'expired', download_url = NULL, "
                    "expires_at = least(expires_at, now()), updated_at = now() "
                    "WHERE id = %s AND status = 'succeeded'",
                    [row["id"]],
                )
        return _json(api.load(who, export_id, position=False)["doc"])

    return app


CANCELED_BEFORE_START = "canceled before it started"


def enqueue_canceled(conn: psycopg.Connection[Any], row: dict[str, Any]) -> None:
    """export_deliveries rows (webhook, email) for an export the API canceled before any run:
    the payload of core.delivery.webhook_payload, event export.canceled."""
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


def app_from_env() -> FastAPI:
    """The app of `export-pipelines serve --workers N`: each worker process reads the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return create_app(Settings.from_env())


def _event(name: str, event_id: int, data: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
