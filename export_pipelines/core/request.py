"""`ExportRequest`: a user's export request, validated against the catalog before any query runs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from export_pipelines.core.catalog import Catalog, InvalidRequest, allowed
from export_pipelines.core.encoders import encoder_class, formats

# Export ids become one S3 key segment: keep them to a safe alphabet.
_EXPORT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_FILTER_VALUES = 1000
MAX_LINK_EXPIRY_HOURS = 7 * 24  # SigV4 presigned URLs cannot outlive 7 days


@dataclass(frozen=True)
class ExportRequest:
    tenant_id: str
    resource: str
    format: str
    compression: str
    columns: tuple[str, ...]
    date_from: datetime | None = None
    date_to: datetime | None = None
    # column -> allowed values (equality when one value, IN when several)
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    export_id: str = "adhoc"
    max_rows_per_file: int | None = None
    link_expiry_hours: int = 24

    def filters_for_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: list(v) for k, v in self.filters.items()}
        if self.date_from:
            out["date_from"] = self.date_from.isoformat()
        if self.date_to:
            out["date_to"] = self.date_to.isoformat()
        return out


def parse_instant(value: Any, field_name: str) -> datetime:
    """ISO 8601 date or datetime; naive values are taken as UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(
                field_name, f"{value!r} is not an ISO 8601 date or datetime (e.g. 2024-05-01)"
            ) from None
    else:
        raise InvalidRequest(field_name, f"must be an ISO 8601 string, got {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _filter_values(column: str, value: Any) -> tuple[str, ...]:
    values = value if isinstance(value, list | tuple) else [value]
    if not values:
        raise InvalidRequest(f"filters.{column}", "needs at least one value")
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidRequest(f"filters.{column}", f"at most {MAX_FILTER_VALUES} values, got {len(values)}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise InvalidRequest(f"filters.{column}", f"values must be strings or numbers, got {v!r}")
        out.append(str(v))
    return tuple(out)


def build_request(
    catalog: Catalog,
    *,
    tenant_id: Any,
    resource: Any,
    format: Any = "csv",
    compression: Any = None,
    columns: Any = None,
    filters: Any = None,
    export_id: Any = None,
    max_rows_per_file: Any = None,
    link_expiry_hours: Any = 24,
) -> ExportRequest:
    """Validate every field; raise InvalidRequest naming the field and what is allowed."""
    if not isinstance(tenant_id, str | int) or isinstance(tenant_id, bool) or not str(tenant_id).strip():
        raise InvalidRequest("tenant_id", "must be a non-empty string")
    tenant = str(tenant_id)
    if len(tenant) > 256 or any(ord(ch) < 32 for ch in tenant):
        raise InvalidRequest("tenant_id", "must be at most 256 printable characters")
    if not isinstance(resource, str):
        raise InvalidRequest("resource", f"must be a string; allowed: {allowed(list(catalog.resources))}")
    spec = catalog.resource(resource)

    if format not in formats():
        raise InvalidRequest("format", f"unknown format {format!r}; allowed: {allowed(formats())}")
    enc = encoder_class(format)
    comp = enc.default_compression if compression in (None, "") else compression
    if comp not in enc.compressions:
        raise InvalidRequest(
            "compression",
            f"{compression!r} is not available for {format}; allowed: {allowed(enc.compressions)}",
        )

    if columns is not None and (
        not isinstance(columns, list | tuple) or not all(isinstance(c, str) for c in columns)
    ):
        raise InvalidRequest("columns", f"must be a list of column names; allowed: {allowed(spec.columns)}")
    chosen = spec.check_columns(list(columns) if columns else None)

    if not isinstance(filters or {}, dict):
        raise InvalidRequest("filters", "must be a JSON object (mapping) of filter name to value(s)")
    raw_filters = dict(filters or {})
    date_from = date_to = None
    if "date_from" in raw_filters or "date_to" in raw_filters:
        if spec.time_column is None:
            raise InvalidRequest("filters", f"resource {spec.name!r} has no time column to filter dates on")
        if raw_filters.get("date_from") is not None:
            date_from = parse_instant(raw_filters["date_from"], "filters.date_from")
        if raw_filters.get("date_to") is not None:
            date_to = parse_instant(raw_filters["date_to"], "filters.date_to")
        if date_from and date_to and date_from >= date_to:
            raise InvalidRequest("filters.date_to", "must be after date_from (date_to is exclusive)")
    column_filters: dict[str, tuple[str, ...]] = {}
    for name, value in raw_filters.items():
        if name in ("date_from", "date_to"):
            continue
        if not isinstance(name, str):
            raise InvalidRequest("filters", f"filter names are strings, got {name!r}")
        spec.check_filter(name)
        column_filters[name] = _filter_values(name, value)

    eid = "adhoc" if export_id in (None, "") else export_id
    if not isinstance(eid, str) or not _EXPORT_ID.match(eid) or eid in (".", ".."):
        raise InvalidRequest("export_id", "1-128 characters of A-Z a-z 0-9 . _ -, starting alphanumeric")

    if max_rows_per_file is not None and (
        isinstance(max_rows_per_file, bool) or not isinstance(max_rows_per_file, int) or max_rows_per_file < 1
    ):
        raise InvalidRequest("max_rows_per_file", "must be a positive integer (or empty for one file)")
    if (
        isinstance(link_expiry_hours, bool)
        or not isinstance(link_expiry_hours, int)
        or not 1 <= link_expiry_hours <= MAX_LINK_EXPIRY_HOURS
    ):
        raise InvalidRequest("link_expiry_hours", f"must be an integer from 1 to {MAX_LINK_EXPIRY_HOURS}")

    return ExportRequest(
        tenant_id=tenant,
        resource=spec.name,
        format=format,
        compression=comp,
        columns=chosen,
        date_from=date_from,
        date_to=date_to,
        filters=column_filters,
        export_id=eid,
        max_rows_per_file=max_rows_per_file,
        link_expiry_hours=link_expiry_hours,
    )
