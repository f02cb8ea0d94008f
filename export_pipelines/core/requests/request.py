"""`ExportRequest`: a user's export request, validated against the catalog before any query runs."""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from export_pipelines.core.delivery.webhook_target import check_target, check_url_shape
from export_pipelines.core.errors import InvalidRequest, InvalidWebhook
from export_pipelines.core.formats import format_names, format_spec
from export_pipelines.core.requests.catalog import Catalog, allowed, shown

# Export ids become one S3 key segment: keep them to a safe alphabet. Used with fullmatch: `$`
# would also match before a trailing newline.
_EXPORT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# ISO 8601 as people write it: a date, optionally a time (seconds and fraction optional), optionally
# Z or a UTC difference (+02:00). Anything else ("2024-01-01ZZ", which fromisoformat would read) is refused.
_ISO_8601 = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,6})?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?"
)
# Unicode categories a tenant id may not contain: controls (C0, DEL, C1), format characters (bidi
# overrides, zero-width joiners, soft hyphen, BOM) and the line/paragraph separators: they make
# two different ids look the same in logs, the UI and file names.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
# The separator of Dagster's multi-partition keys ("month|tenant"): a tenant id holding it cannot
# be a partition, so the monthly schedule could not run it.
PARTITION_KEY_SEPARATOR = "|"
# S3 keys are at most 1,024 bytes. The tenant's key segment ("tenant=" + percent-encoded UTF-8) may
# take half; prefix, resource, export id and file name share the rest (plan_export checks the sum).
MAX_TENANT_KEY_BYTES = 512
S3_MAX_KEY_BYTES = 1024
# Limits on what one request may carry: far above real use, far below what hurts a sensor tick,
# the run config in Dagster's storage, or the query's parameter list.
MAX_TENANT_ID_CHARS = 256
MAX_COLUMNS = 1000
MAX_FILTER_VALUES = 1000
MAX_FILTER_VALUE_CHARS = 1000
_MAX_INT = 10**MAX_FILTER_VALUE_CHARS
MAX_ROWS_PER_FILE = 1_000_000_000
# Every file is a multipart upload, a manifest entry and a presigned link: below ~100 rows per file
# the per-object cost outweighs the rows (582 rows at 1 per file took 115 s). 100, not 1,000,
# because small reports (PDF pages) are split that finely on purpose.
MIN_ROWS_PER_FILE = 100
MAX_LINK_EXPIRY_HOURS = 7 * 24  # SigV4 presigned URLs cannot outlive 7 days
MAX_WEBHOOK_URL_CHARS = 2048
MAX_EMAIL_CHARS = 254  # RFC 5321 path limit
# One plain address: a list ("a@x, b@y") or display names would mail people nobody asked for.
_EMAIL = re.compile(r"^[^@\s,;<>()\[\]\\\"]+@[^@\s,;<>()\[\]\\\"]+\.[^@\s,;<>()\[\]\\\"]+$")


OP_COLUMN = "_op"  # a feed delivery's extra column: 'upsert' or 'delete'


@dataclass(frozen=True)
class FeedWindow:
    """What makes an export a feed's delivery (docs/feeds.md): which changes it holds.

    `mode` full: every row of the selection, `_op = 'upsert'`; incremental: every key whose row or
    tombstone was written by a transaction not visible in `previous_snapshot` (the previous
    delivery's snapshot) and visible in this delivery's, as its state in this snapshot."""

    feed_id: str
    sequence: int
    mode: str  # full | incremental
    previous_snapshot: str | None = None
    previous_manifest: str | None = None
    # The previous delivery's schema (columns and types): a changed type forces a full delivery.
    previous_schema: tuple[tuple[str, str], ...] | None = None
    previous_schema_hash: str | None = None
    reason: str = ""  # why this delivery is full (first, asked for, the schema's types changed)
    # The table's change tracking (its trigger's oid) when the previous delivery was made, and now:
    # tracking turned off and on again in between left writes untracked, so the delivery is full.
    previous_tracking_id: int | None = None
    tracking_id: int | None = None


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
    # Set for a feed's delivery: read in one snapshot, with `_op`, only the changes when incremental.
    feed: FeedWindow | None = None

    def filters_for_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: list(v) for k, v in self.filters.items()}
        if self.date_from:
            out["date_from"] = self.date_from.isoformat()
        if self.date_to:
            out["date_to"] = self.date_to.isoformat()
        return out


def check_text(value: str, field_name: str) -> None:
    """PostgreSQL text cannot hold NUL, and UTF-8 cannot hold lone surrogates (what Python makes
    of undecodable bytes): reject both here rather than fail deep inside a query."""
    if "\x00" in value:
        raise InvalidRequest(field_name, "must not contain NUL (\\x00) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            field_name, "must be valid UTF-8 text (found a lone surrogate: undecodable input bytes?)"
        ) from None


def check_tenant_id(tenant: str) -> None:
    """What a tenant id may hold beyond being text: it becomes a query parameter, an S3 key segment
    and a Dagster partition key, and people read it in logs."""
    check_text(tenant, "tenant_id")
    bad = next((ch for ch in tenant if unicodedata.category(ch) in _INVISIBLE_CATEGORIES), None)
    if bad is not None:
        raise InvalidRequest(
            "tenant_id",
            f"must be printable: no control characters, format or separator characters (found "
            f"U+{ord(bad):04X}; "
            "tab, newline, C1 controls, bidi overrides, zero-width characters and U+2028 are refused)",
        )
    if PARTITION_KEY_SEPARATOR in tenant:
        raise InvalidRequest(
            "tenant_id", f"must not contain {PARTITION_KEY_SEPARATOR!r} (the partition key separator)"
        )
    segment = len(("tenant=" + quote(tenant, safe="")).encode())
    if segment > MAX_TENANT_KEY_BYTES:
        raise InvalidRequest(
            "tenant_id",
            f"is too long for an S3 key: its key segment takes {segment} bytes percent-encoded, "
            f"at most {MAX_TENANT_KEY_BYTES} are allowed (S3 keys are at most {S3_MAX_KEY_BYTES} bytes)",
        )


def parse_instant(value: Any, field_name: str) -> datetime:
    """ISO 8601 date or datetime; naive values are taken as UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        try:
            if not _ISO_8601.fullmatch(text):
                raise ValueError(text)
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            raise InvalidRequest(
                field_name,
                f"{shown(value)} is not an ISO 8601 date or datetime from year 1 to 9999 (e.g. 2024-05-01)",
            ) from None
    else:
        raise InvalidRequest(
            field_name, f"must be an ISO 8601 string (e.g. 2024-05-01), got {type(value).__name__}"
        )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _filter_values(column: str, value: Any) -> tuple[str, ...]:
    where = f"filters.{column}"
    values = value if isinstance(value, list | tuple) else [value]
    if not values:
        raise InvalidRequest(where, "needs at least one value")
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidRequest(where, f"at most {MAX_FILTER_VALUES} values, got {len(values)}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise InvalidRequest(where, f"values must be strings or numbers, got {shown(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise InvalidRequest(where, f"numbers must be finite, got {v!r}")
        # Compare ints by size: str() of a 5000-digit int raises ValueError of its own.
        too_long = abs(v) >= _MAX_INT if isinstance(v, int) else len(str(v)) > MAX_FILTER_VALUE_CHARS
        if too_long:
            raise InvalidRequest(where, f"each value at most {MAX_FILTER_VALUE_CHARS} characters")
        if isinstance(v, str):
            check_text(v, where)
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
    # A tenant id is text (the request table's column); a number is a caller's type mistake.
    if not isinstance(tenant_id, str) or not tenant_id.strip():
        got = type(tenant_id).__name__ if not isinstance(tenant_id, str) else "an empty string"
        raise InvalidRequest("tenant_id", f"must be a non-empty string, got {got}")
    tenant = tenant_id
    if len(tenant) > MAX_TENANT_ID_CHARS:
        raise InvalidRequest(
            "tenant_id", f"must be at most {MAX_TENANT_ID_CHARS} characters, got {len(tenant)}"
        )
    check_tenant_id(tenant)
    if not isinstance(resource, str):
        raise InvalidRequest(
            "resource",
            f"must be a string, got {type(resource).__name__}; allowed: {allowed(list(catalog.resources))}",
        )
    spec = catalog.resource(resource)

    if not isinstance(format, str) or format not in format_names():
        raise InvalidRequest("format", f"unknown format {shown(format)}; allowed: {allowed(format_names())}")
    fmt = format_spec(format)
    comp = fmt.default_compression if compression in (None, "") else compression
    if not isinstance(comp, str) or comp not in fmt.compressions:
        raise InvalidRequest(
            "compression",
            f"{shown(compression)} is not available for {format}; allowed: {allowed(fmt.compressions)}",
        )

    if columns is not None:
        if not isinstance(columns, list | tuple) or not all(isinstance(c, str) for c in columns):
            raise InvalidRequest(
                "columns", f"must be a list of column names; allowed: {allowed(spec.columns)}"
            )
        # Empty is a caller's bug more often than a wish for everything: all columns is null/omitted.
        if not columns:
            raise InvalidRequest(
                "columns",
                f"must name at least one column (omit it for all); allowed: {allowed(spec.columns)}",
            )
        if len(columns) > MAX_COLUMNS:
            raise InvalidRequest(
                "columns",
                f"at most {MAX_COLUMNS} names, got {len(columns)}; allowed: {allowed(spec.columns)}",
            )
    chosen = spec.check_columns(list(columns) if columns else None)

    filter_names = allowed(["date_from", "date_to", *spec.filters])
    if not isinstance(filters or {}, dict):
        raise InvalidRequest(
            "filters",
            f"must be a JSON object (mapping) of filter name to value(s), got {type(filters).__name__}; "
            f"allowed: {filter_names}",
        )
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
            raise InvalidRequest(
                "filters.date_to",
                f"must be after date_from (date_to is exclusive); got date_from {date_from.isoformat()}, "
                f"date_to {date_to.isoformat()}",
            )
    column_filters: dict[str, tuple[str, ...]] = {}
    for name, value in raw_filters.items():
        if name in ("date_from", "date_to"):
            continue
        if not isinstance(name, str):
            raise InvalidRequest(
                "filters", f"filter names are strings, got {shown(name)}; allowed: {filter_names}"
            )
        spec.check_filter(name)
        column_filters[name] = _filter_values(name, value)

    eid = "adhoc" if export_id in (None, "") else export_id
    if not isinstance(eid, str) or not _EXPORT_ID.fullmatch(eid) or eid in (".", ".."):
        raise InvalidRequest(
            "export_id", "the request id: 1-128 characters of A-Z a-z 0-9 . _ -, starting alphanumeric"
        )

    if max_rows_per_file is not None and (
        isinstance(max_rows_per_file, bool)
        or not isinstance(max_rows_per_file, int)
        or not 1 <= max_rows_per_file <= MAX_ROWS_PER_FILE
    ):
        raise InvalidRequest(
            "max_rows_per_file",
            f"must be a positive integer up to {MAX_ROWS_PER_FILE} (or empty for one file), "
            f"got {shown(max_rows_per_file)}",
        )
    if max_rows_per_file is not None and max_rows_per_file < MIN_ROWS_PER_FILE:
        raise InvalidRequest(
            "max_rows_per_file",
            f"must be at least {MIN_ROWS_PER_FILE} (each file is an upload and a link of its own), "
            f"got {max_rows_per_file}",
        )
    if (
        isinstance(link_expiry_hours, bool)
        or not isinstance(link_expiry_hours, int)
        or not 1 <= link_expiry_hours <= MAX_LINK_EXPIRY_HOURS
    ):
        raise InvalidRequest(
            "link_expiry_hours",
            f"must be an integer from 1 to {MAX_LINK_EXPIRY_HOURS} (7 days, the SigV4 limit), "
            f"got {shown(link_expiry_hours)}",
        )

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


def check_notify(
    webhook_url: Any, email: Any, allowlist: tuple[str, ...] = (), *, allow_private: bool | None = None
) -> None:
    """Where to tell the requester: one http(s) URL without credentials, one plain address.

    With `allow_private` given (EXPORT_WEBHOOK_ALLOW_PRIVATE), the webhook's host is also resolved and
    checked with the send-time rules (check_target): a host that does not resolve, or resolves to an
    internal address, is refused now, where the tenant hears it. Send time checks again (DNS can
    change)."""
    if webhook_url not in (None, ""):
        if not isinstance(webhook_url, str):
            raise InvalidRequest("webhook_url", f"must be a string, got {type(webhook_url).__name__}")
        if len(webhook_url) > MAX_WEBHOOK_URL_CHARS:
            raise InvalidRequest("webhook_url", f"at most {MAX_WEBHOOK_URL_CHARS} characters")
        check_text(webhook_url, "webhook_url")
        # urlsplit silently drops tabs/newlines: a URL that changes when parsed is refused.
        if any(ch.isspace() or not ch.isprintable() for ch in webhook_url):
            raise InvalidRequest("webhook_url", "must not contain spaces or control characters")
        try:
            check_url_shape(webhook_url, allowlist)  # the address itself is checked at send time
        except InvalidWebhook as exc:
            raise InvalidRequest("webhook_url", str(exc).removeprefix("webhook_url: ")) from None
        parts = urlsplit(webhook_url)
        try:
            parts.port  # noqa: B018 - raises on a port out of range, which urlopen would too, later
        except ValueError:
            raise InvalidRequest("webhook_url", f"has an invalid port: {shown(webhook_url)}") from None
        # Credentials in the URL would sit in the request row and the run config for all to read;
        # receivers authenticate us by the X-Export-Signature HMAC instead.
        if parts.username is not None or parts.password is not None:
            raise InvalidRequest(
                "webhook_url", "must not contain credentials (user:password@); verify X-Export-Signature"
            )
        if allow_private is not None:
            try:
                check_target(
                    webhook_url, allow_private=allow_private, allowlist=allowlist, resolve_timeout=3.0
                )
            except InvalidWebhook:
                raise InvalidRequest(
                    "webhook_url",
                    "refused: the host must resolve, and only to public internet addresses "
                    f"(checked again when the webhook is sent): {shown(webhook_url)}",
                ) from None
    if email not in (None, ""):
        if not isinstance(email, str):
            raise InvalidRequest("email", f"must be a string, got {type(email).__name__}")
        if len(email) > MAX_EMAIL_CHARS:
            raise InvalidRequest("email", f"at most {MAX_EMAIL_CHARS} characters")
        check_text(email, "email")
        if not _EMAIL.match(email) or not email.isprintable():
            raise InvalidRequest("email", f"must be one address like name@example.com, got {shown(email)}")
