"""Error answers of the API: `{"error": {"code", "message", "field"?}}` with stable codes
(DESIGN §3.7), and the one place that maps database errors to HTTP."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi.responses import JSONResponse

# The SQLSTATE of the per-tenant cap trigger (core.storage.migrations.TENANT_CAP_SQLSTATE).
TENANT_CAP_SQLSTATE = "EX429"
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
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def not_found(what: str = "export") -> ApiError:
    # Another tenant's export answers exactly like one that does not exist (404, not 403).
    return ApiError(404, "not_found", f"no such {what}")


def insert_error(exc: psycopg.Error) -> ApiError | None:
    """The API answer for a database error raised by inserting a request, or None (a real fault).

    Over the tenant's cap of active exports, the insert trigger raises SQLSTATE EX429 with a
    message naming the cap: that is 429 + Retry-After (DESIGN §3.3, §3.7)."""
    if exc.sqlstate == TENANT_CAP_SQLSTATE:
        message = (exc.diag.message_primary or "too many active exports").strip()
        return ApiError(
            429,
            "too_many_active_exports",
            message,
            headers={"Retry-After": str(CAP_RETRY_AFTER_SECONDS)},
        )
    if exc.sqlstate == "23514":  # check_violation: a size CHECK of the trust boundary
        return ApiError(422, "invalid_request", f"the request is too large: {exc.diag.message_primary}")
    return None
