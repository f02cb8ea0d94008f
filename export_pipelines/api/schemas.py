"""The API's documented shapes (OpenAPI at /openapi.json). The handlers build plain dicts; these
models describe them for /docs and for the schema tests (schemathesis)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel

Status = Literal["pending", "queued", "running", "succeeded", "failed", "canceled", "expired"]
STATUSES: tuple[str, ...] = ("pending", "queued", "running", "succeeded", "failed", "canceled", "expired")
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "expired"})
ACTIVE_STATUSES = frozenset({"pending", "queued", "running"})


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ExportError(BaseModel):
    code: str
    message: str


class ExportFile(BaseModel):
    number: int
    filename: str
    rows: int | None
    bytes: int | None
    sha256: str | None
    url: str
    expires_at: str


class ExportStatus(BaseModel):
    id: str
    object: Literal["export"]
    tenant_id: str
    resource: str
    format: str
    compression: str | None
    columns: list[Any] | None
    filters: Any
    status: Status
    attempt: int
    rows_total: int | None
    rows_exported: int
    bytes_written: int
    percent: float | None
    queue_position: int | None
    created_at: str
    queued_at: str | None
    started_at: str | None
    completed_at: str | None
    updated_at: str
    expires_at: str | None
    cancel_requested_at: str | None
    error: ExportError | None
    feed_id: str | None = None
    sequence: int | None = None
    links: dict[str, str]
    files: list[ExportFile] | None = None


class ExportList(BaseModel):
    data: list[ExportStatus]
    next_cursor: str | None


class FileList(BaseModel):
    data: list[ExportFile]
    next_cursor: None = None
    manifest_url: str
    expires_at: str


class StreamToken(BaseModel):
    token: str
    expires_at: str
    url: str


class Resource(BaseModel):
    name: str
    columns: list[str]
    filters: list[str]
    time_column: str | None


class ResourceList(BaseModel):
    data: list[Resource]
    next_cursor: None = None
    formats: list[str]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


# The POST /v1/exports body, as documented (docs/api.md). The handler validates with the same
# functions the request sensor uses, so messages match the sensor's; this is the documentation.
CREATE_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["resource"],
    "properties": {
        "resource": {"type": "string", "description": "a catalog resource, e.g. orders"},  # enum: per catalog
        "format": {
            "type": "string",
            "enum": ["csv", "csv_excel", "jsonl", "json", "parquet", "xlsx", "pdf"],
            "default": "csv",
        },
        "compression": {"type": ["string", "null"], "description": "per format; default: the format's own"},
        "columns": {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1},
        "filters": {
            "type": ["object", "null"],
            "description": "date_from (inclusive), date_to (exclusive), ISO 8601; catalog filter "
            "columns: a value or a list of values",
            "additionalProperties": True,
        },
        "notify": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "webhook_url": {"type": ["string", "null"]},
                "email": {"type": ["string", "null"]},
            },
        },
        "link_expiry_hours": {"type": ["integer", "null"], "minimum": 1, "maximum": 168},
        "max_rows_per_file": {"type": ["integer", "null"], "minimum": 1},
        "destination_id": {
            "type": ["string", "null"],
            "description": "a destination of the tenant (GET /v1/destinations); default: links",
        },
        "tenant_id": {"type": "string", "description": "operator keys only: the tenant to act for"},
    },
}


def create_body_schema(resources: list[str]) -> dict[str, Any]:
    """CREATE_BODY_SCHEMA with the deployment's catalog resources as the allowed values."""
    properties = dict(CREATE_BODY_SCHEMA["properties"])
    properties["resource"] = {**properties["resource"], "enum": sorted(resources)}
    return {**CREATE_BODY_SCHEMA, "properties": properties}


# The path parameter every /v1/exports/{export_id} route takes.
ExportId = Annotated[str, Path(description="the export id (a UUID)", max_length=64)]

# The error answers every authenticated route documents.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, unknown or revoked API key"},
    404: {"model": ErrorBody, "description": "no such export (or another tenant's)"},
    413: {"model": ErrorBody, "description": "request body over the server's limit"},
    422: {"model": ErrorBody, "description": "invalid request; `field` names the field"},
    429: {"model": ErrorBody, "description": "over a rate limit (per key or per tenant); see Retry-After"},
    503: {"model": ErrorBody, "description": "database or storage unavailable"},
}
