"""Error answers of the API: `{"error": {"code", "message", "field"?}}` with stable codes
(docs/api.md), and the HTTP answer for each of the project's errors (what a database refusal means
is core/storage/pg_errors.py's to say)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fastapi.responses import JSONResponse

from export_pipelines.api.metrics import count_error
from export_pipelines.core.errors import (
    ExportError,
    IdempotencyConflict,
    IdempotencyInFlight,
    Rejected,
    TooManyActive,
)

# How long a client told 429 should wait before it tries again (Retry-After, seconds): about the
# time a small export takes, so a polite client is not turned away twice.
CAP_RETRY_AFTER_SECONDS = 30


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.field, self.headers)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    count_error(status, code)  # every error answer passes here: the metrics count it by its code
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def json_object_body(
    raw: bytes, allowed: Iterable[str], shown: Iterable[str] | None = None
) -> dict[str, Any]:
    """A request body that must be one JSON object of known fields: 422 naming the field (and the
    allowed ones, `shown` if given) otherwise. One rule for every route that takes a body."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        raise ApiError(422, "invalid_request", "body: not valid JSON", "body") from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "body: must be a JSON object", "body")
    allowed = frozenset(allowed)
    unknown = sorted(str(k) for k in body if k not in allowed)
    if unknown:
        names = ", ".join(sorted(allowed if shown is None else shown))
        raise ApiError(422, "invalid_request", f"{unknown[0]}: unknown field; allowed: {names}", unknown[0])
    return body


def not_found(what: str = "export") -> ApiError:
    # Another tenant's export answers exactly like one that does not exist (404, not 403).
    return ApiError(404, "not_found", f"no such {what}")


def export_error_response(exc: ExportError) -> JSONResponse | None:
    """The answer to a project error a handler let through; None for a service fault (503).

    Over the tenant's cap of active exports: 429 + Retry-After, with the message naming the cap. An
    idempotency key used for another body: 422; its first request still being created: 409."""
    if isinstance(exc, TooManyActive):
        return error_response(
            429,
            "too_many_active_exports",
            exc.reason,
            headers={"Retry-After": str(CAP_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, IdempotencyConflict):
        return error_response(422, "idempotency_conflict", str(exc), exc.field)
    if isinstance(exc, IdempotencyInFlight):
        return error_response(409, "idempotency_in_flight", str(exc), exc.field, {"Retry-After": "1"})
    if isinstance(exc, Rejected):
        return error_response(422, "invalid_request", str(exc), exc.field)
    return None
