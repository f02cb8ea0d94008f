"""What a database refusal means for whoever asked: the one mapping from SQLSTATEs (the tenant cap's
trigger, a size CHECK, the idempotency key's unique index) to the project's errors
(docs/architecture.md); every door then answers those in its own way."""

from __future__ import annotations

import psycopg
import psycopg.errors

from export_pipelines.core.errors import ExportError, InvalidRequest, RequestTooLarge, TooManyActive
from export_pipelines.core.storage.migrations.request_table import (
    MAX_CODE_CHARS,
    MAX_COLUMNS,
    MAX_COLUMNS_BYTES,
    MAX_EMAIL_CHARS,
    MAX_FILTERS_BYTES,
    MAX_NAME_CHARS,
    MAX_TENANT_ID_CHARS,
    MAX_WEBHOOK_URL_CHARS,
    TENANT_CAP_SQLSTATE,
    UNKNOWN_TENANT_SQLSTATE,
)

SIZES = (
    f"filters at most {MAX_FILTERS_BYTES} bytes, columns at most {MAX_COLUMNS} names, webhook_url at "
    f"most {MAX_WEBHOOK_URL_CHARS} and email at most {MAX_EMAIL_CHARS} characters, tenant_id at most "
    f"{MAX_TENANT_ID_CHARS} characters, resource at most {MAX_NAME_CHARS}, format and compression at "
    f"most {MAX_CODE_CHARS} characters, columns at most {MAX_COLUMNS_BYTES} bytes in all"
)


def refusal(exc: psycopg.Error) -> ExportError | psycopg.Error:
    """The project's error for a database refusal of a request row: over the tenant's cap of active
    exports (TooManyActive, with the trigger's message naming the cap), a tenant the tenants table
    does not list (InvalidRequest on tenant_id), or over a size the database checks
    (RequestTooLarge); any other error is returned unchanged (a real fault)."""
    if exc.sqlstate == TENANT_CAP_SQLSTATE:
        return TooManyActive((exc.diag.message_primary or "too many active export requests").strip())
    if exc.sqlstate == UNKNOWN_TENANT_SQLSTATE:
        return InvalidRequest(
            "tenant_id", (exc.diag.message_primary or "not a tenant").removeprefix("tenant_id ")
        )
    if isinstance(exc, psycopg.errors.CheckViolation):
        return RequestTooLarge(f"the request is too large: {exc.diag.message_primary}; allowed: {SIZES}")
    return exc
