"""Bad input never loses data or wedges the system.

One table of malformed requests, driven through every door a request comes in by:
`build_request` itself, a row in export_requests picked up by the real sensor (a good row beside
it must still get its run), run config for tenant_export_job (a `Failure` naming the field, no
S3 object, no open multipart upload), and the `export-pipelines request` command line.
Every rejection names the field and, where the choice is from a finite set, the allowed values.
SQL fragments in values are literals: they export nothing of anyone else and drop nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg
import pytest

from export_pipelines.core.requests.catalog import InvalidRequest
from export_pipelines.core.requests.queue import RequestQueue
from export_pipelines.core.requests.request import build_request, check_notify
from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines.orchestration.resources import ExportSettings
from export_pipelines_tests.support.readback import csv_rows, read_manifest
from export_pipelines_tests.support.services import code_location, run_export_job

export_request_sensor = code_location()["export_request_sensor"]

GOOD = {"tenant_id": "t-004", "resource": "orders"}
ALL_COLUMNS = "allowed: amount, attrs, created_at, currency, customer_email, id, note, status, tenant_id"
FILTER_NAMES = "allowed: currency, date_from, date_to, status"
# A rejection quotes at most a short piece of what it was sent: never the megabyte back.
MAX_MESSAGE = 1000
MB = 1024 * 1024


@dataclass(frozen=True)
class Bad:
    """A request (GOOD plus `fields`) that must be rejected for `field`, saying each of `says`."""

    id: str
    fields: dict[str, Any]
    field: str
    says: tuple[str, ...] = ()


def bad(id: str, fields: dict[str, Any], field: str, *says: str) -> Bad:
    return Bad(id, fields, field, says)


CASES: list[Bad] = [
    # --- wrong JSON types, one or more per field
    bad("tenant-number", {"tenant_id": 4}, "tenant_id", "must be a non-empty string, got int"),
    bad("tenant-null", {"tenant_id": None}, "tenant_id", "got NoneType"),
    bad("tenant-list", {"tenant_id": ["t-004"]}, "tenant_id", "got list"),
    bad("resource-number", {"resource": 1}, "resource", "must be a string, got int", "allowed: orders"),
    bad("resource-list", {"resource": ["orders"]}, "resource", "allowed: orders"),
    bad(
        "format-list",
        {"format": ["csv"]},
        "format",
        "allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx",
    ),
    bad("format-number", {"format": 1}, "format", "allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx"),
    bad("compression-number", {"compression": 9}, "compression", "allowed: gzip, none, zstd"),
    bad("compression-list", {"compression": ["gzip"]}, "compression", "allowed: gzip, none, zstd"),
    bad("columns-string", {"columns": "id,status"}, "columns", "must be a list of column names", ALL_COLUMNS),
    bad("columns-object", {"columns": {"id": True}}, "columns", "must be a list", ALL_COLUMNS),
    bad("columns-number-item", {"columns": [1, "id"]}, "columns", "must be a list", ALL_COLUMNS),
    bad("columns-null-item", {"columns": ["id", None]}, "columns", "must be a list", ALL_COLUMNS),
    bad("columns-nested", {"columns": [["id"]]}, "columns", "must be a list", ALL_COLUMNS),
    bad("filters-string", {"filters": "status=paid"}, "filters", "must be a JSON object", FILTER_NAMES),
    bad("filters-list", {"filters": [["status", "paid"]]}, "filters", "must be a JSON object", FILTER_NAMES),
    bad("filters-number", {"filters": 5}, "filters", "must be a JSON object", FILTER_NAMES),
    bad(
        "filter-value-object", {"filters": {"status": {"eq": "paid"}}}, "filters.status", "strings or numbers"
    ),
    bad("filter-value-bool", {"filters": {"status": True}}, "filters.status", "strings or numbers"),
    bad("filter-value-null", {"filters": {"status": None}}, "filters.status", "strings or numbers"),
    bad("filter-value-nested", {"filters": {"status": [["paid"]]}}, "filters.status", "strings or numbers"),
    bad("date-number", {"filters": {"date_from": 20240501}}, "filters.date_from", "ISO 8601", "got int"),
    bad("date-list", {"filters": {"date_from": ["2024-05-01"]}}, "filters.date_from", "ISO 8601"),
    bad("date-object", {"filters": {"date_to": {"year": 2024}}}, "filters.date_to", "ISO 8601"),
    bad("max-rows-string", {"max_rows_per_file": "100"}, "max_rows_per_file", "positive integer up to"),
    bad("max-rows-float", {"max_rows_per_file": 1.5}, "max_rows_per_file", "positive integer up to"),
    bad("expiry-string", {"link_expiry_hours": "24"}, "link_expiry_hours", "integer from 1 to 168"),
    bad("expiry-bool", {"link_expiry_hours": True}, "link_expiry_hours", "integer from 1 to 168"),
    bad("webhook-number", {"webhook_url": 5}, "webhook_url", "must be a string"),
    bad("email-list", {"email": ["a@example.com"]}, "email", "must be a string"),
    # --- unknown names (and a case that is not the catalog's)
    bad(
        "resource-unknown",
        {"resource": "invoices"},
        "resource",
        "unknown resource 'invoices'; allowed: orders",
    ),
    bad("resource-case", {"resource": "Orders"}, "resource", "allowed: orders"),
    bad(
        "format-unknown",
        {"format": "xml"},
        "format",
        "unknown format 'xml'; allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx",
    ),
    bad(
        "format-case", {"format": "CSV"}, "format", "allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx"
    ),
    bad("compression-unknown", {"compression": "brotli"}, "compression", "allowed: gzip, none, zstd"),
    bad(
        "compression-wrong-format",
        {"format": "parquet", "compression": "gzip"},
        "compression",
        "not available for parquet; allowed: none, snappy, zstd",
    ),
    bad("column-unknown", {"columns": ["id", "ssn"]}, "columns", "unknown column(s) 'ssn'", ALL_COLUMNS),
    bad("column-twice", {"columns": ["id", "id"]}, "columns", "listed twice"),
    bad("filter-unknown", {"filters": {"note": "x"}}, "filters", "'note' is not a filter", FILTER_NAMES),
    bad("filter-tenant", {"filters": {"tenant_id": "t-005"}}, "filters", "'tenant_id' is not", FILTER_NAMES),
    # --- SQL in names (values are literals: see LITERALS below)
    bad("column-sql", {"columns": ["id; DROP TABLE orders"]}, "columns", "unknown column(s)", ALL_COLUMNS),
    bad("column-star", {"columns": ["*"]}, "columns", "unknown column(s) '*'", ALL_COLUMNS),
    bad("column-quote", {"columns": ['id" FROM orders --']}, "columns", "unknown column(s)", ALL_COLUMNS),
    bad(
        "filter-key-sql",
        {"filters": {"status = 'x' OR 1=1 --": "x"}},
        "filters",
        "is not a filter",
        FILTER_NAMES,
    ),
    bad("resource-sql", {"resource": "orders; DROP TABLE orders"}, "resource", "allowed: orders"),
    bad(
        "format-sql",
        {"format": "csv'; DROP TABLE export_requests; --"},
        "format",
        "allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx",
    ),
    # --- huge lists and strings: sane limits, said plainly, nothing echoed back in full
    bad(
        "100k-filter-values",
        {"filters": {"status": ["paid"] * 100_000}},
        "filters.status",
        "at most 1000 values, got 100000",
    ),
    bad("10k-columns", {"columns": ["id"] * 10_000}, "columns", "at most 1000 names, got 10000", ALL_COLUMNS),
    bad(
        "1000-unknown-columns",
        {"columns": [f"c{i}" for i in range(1000)]},
        "columns",
        "and 995 more",
        ALL_COLUMNS,
    ),
    bad("1mb-tenant", {"tenant_id": "t" * MB}, "tenant_id", "at most 256 characters, got 1048576"),
    bad("1mb-filter-value", {"filters": {"status": "p" * MB}}, "filters.status", "at most 1000 characters"),
    bad("1mb-resource", {"resource": "r" * MB}, "resource", "allowed: orders"),
    bad("1mb-column", {"columns": ["c" * MB]}, "columns", "unknown column(s)", ALL_COLUMNS),
    bad("1mb-filter-key", {"filters": {"k" * MB: "x"}}, "filters", "is not a filter", FILTER_NAMES),
    bad("1mb-date", {"filters": {"date_from": "2" * MB}}, "filters.date_from", "ISO 8601"),
    bad("1mb-webhook", {"webhook_url": "https://example.com/" + "a" * MB}, "webhook_url", "at most 2048"),
    bad("huge-int-value", {"filters": {"status": 10**5000}}, "filters.status", "at most 1000 characters"),
    bad("infinite-value", {"filters": {"status": math.inf}}, "filters.status", "finite"),
    # --- empty
    bad("tenant-empty", {"tenant_id": ""}, "tenant_id", "non-empty"),
    bad("tenant-blank", {"tenant_id": "   "}, "tenant_id", "non-empty"),
    bad("resource-empty", {"resource": ""}, "resource", "allowed: orders"),
    bad("format-empty", {"format": ""}, "format", "allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx"),
    bad("columns-empty", {"columns": []}, "columns", "at least one column", ALL_COLUMNS),
    bad("filter-values-empty", {"filters": {"status": []}}, "filters.status", "at least one value"),
    # --- dates: beyond year 9999, reversed, empty ranges, not dates
    bad("date-year-10000", {"filters": {"date_from": "10000-01-01"}}, "filters.date_from", "year 1 to 9999"),
    bad("date-to-year-10000", {"filters": {"date_to": "+10000-01-01"}}, "filters.date_to", "year 1 to 9999"),
    bad(
        "dates-reversed",
        {"filters": {"date_from": "2024-05-01", "date_to": "2024-04-01"}},
        "filters.date_to",
        "must be after date_from",
        "2024-04-01T00:00:00+00:00",
    ),
    bad(
        "dates-equal",
        {"filters": {"date_from": "2024-05-01", "date_to": "2024-05-01T00:00:00Z"}},
        "filters.date_to",
        "must be after date_from",
    ),
    bad(
        # 05:00 UTC is after 03:00 UTC: compared as instants, not as wall-clock text.
        "dates-reversed-across-zones",
        {"filters": {"date_from": "2024-05-01T00:00:00-05:00", "date_to": "2024-05-01T03:00:00Z"}},
        "filters.date_to",
        "must be after date_from",
    ),
    bad(
        "date-word",
        {"filters": {"date_from": "yesterday"}},
        "filters.date_from",
        "'yesterday' is not an ISO 8601",
    ),
    bad("date-feb-30", {"filters": {"date_from": "2024-02-30"}}, "filters.date_from", "ISO 8601"),
    bad("date-european", {"filters": {"date_to": "31/12/2024"}}, "filters.date_to", "ISO 8601"),
    bad("date-hour-25", {"filters": {"date_to": "2024-05-01T25:00"}}, "filters.date_to", "ISO 8601"),
    bad("date-empty", {"filters": {"date_from": ""}}, "filters.date_from", "ISO 8601"),
    bad(
        "date-zone-name", {"filters": {"date_from": "2024-05-01 00:00 CET"}}, "filters.date_from", "ISO 8601"
    ),
    # --- NUL, lone surrogates (what undecodable bytes become), control characters
    bad("tenant-nul", {"tenant_id": "t-004\x00"}, "tenant_id", "NUL"),
    bad("tenant-surrogate", {"tenant_id": "t-004\ud800"}, "tenant_id", "valid UTF-8"),
    bad("tenant-undecodable-byte", {"tenant_id": "t-\udcff"}, "tenant_id", "valid UTF-8"),
    bad("tenant-newline", {"tenant_id": "t-004\n"}, "tenant_id", "control characters"),
    bad("tenant-tab", {"tenant_id": "t-\t004"}, "tenant_id", "control characters"),
    bad("filter-value-nul", {"filters": {"status": "paid\x00"}}, "filters.status", "NUL"),
    bad(
        "filter-value-surrogate", {"filters": {"status": ["paid", "\udcff"]}}, "filters.status", "valid UTF-8"
    ),
    bad("filter-key-nul", {"filters": {"sta\x00tus": "paid"}}, "filters", "is not a filter", FILTER_NAMES),
    bad("column-surrogate", {"columns": ["id\ud800"]}, "columns", "unknown column(s)", ALL_COLUMNS),
    bad("resource-surrogate", {"resource": "\udcff"}, "resource", "allowed: orders"),
    bad(
        "format-nul",
        {"format": "csv\x00"},
        "format",
        "allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx",
    ),
    bad("date-nul", {"filters": {"date_from": "2024-05-01\x00"}}, "filters.date_from", "ISO 8601"),
    bad("webhook-surrogate", {"webhook_url": "https://example.com/\ud800"}, "webhook_url", "valid UTF-8"),
    bad("email-nul", {"email": "a\x00@example.com"}, "email", "NUL"),
    # --- rows per file and link expiry (SigV4 presigned links live at most 7 days)
    bad("max-rows-zero", {"max_rows_per_file": 0}, "max_rows_per_file", "positive integer up to 1000000000"),
    bad("max-rows-negative", {"max_rows_per_file": -1}, "max_rows_per_file", "positive integer up to"),
    bad("max-rows-huge", {"max_rows_per_file": 10**12}, "max_rows_per_file", "positive integer up to"),
    bad("max-rows-enormous", {"max_rows_per_file": 10**30}, "max_rows_per_file", "positive integer up to"),
    bad("expiry-zero", {"link_expiry_hours": 0}, "link_expiry_hours", "integer from 1 to 168"),
    bad("expiry-negative", {"link_expiry_hours": -24}, "link_expiry_hours", "integer from 1 to 168"),
    bad("expiry-8-days", {"link_expiry_hours": 169}, "link_expiry_hours", "7 days"),
    bad("expiry-a-year", {"link_expiry_hours": 24 * 365}, "link_expiry_hours", "integer from 1 to 168"),
    bad("expiry-enormous", {"link_expiry_hours": 10**30}, "link_expiry_hours", "integer from 1 to 168"),
    # --- webhook URLs and email addresses
    bad("webhook-file", {"webhook_url": "file:///etc/passwd"}, "webhook_url", "must be an http(s) URL"),
    bad("webhook-ftp", {"webhook_url": "ftp://example.com/hook"}, "webhook_url", "must be an http(s) URL"),
    bad(
        "webhook-javascript", {"webhook_url": "javascript:alert(1)"}, "webhook_url", "must be an http(s) URL"
    ),
    bad("webhook-no-scheme", {"webhook_url": "example.com/hook"}, "webhook_url", "must be an http(s) URL"),
    bad("webhook-no-host", {"webhook_url": "https:///hook"}, "webhook_url", "must be an http(s) URL"),
    bad(
        "webhook-credentials", {"webhook_url": "https://u:secret@example.com/h"}, "webhook_url", "credentials"
    ),
    bad("webhook-user", {"webhook_url": "https://token@example.com/h"}, "webhook_url", "credentials"),
    bad("webhook-bad-port", {"webhook_url": "http://example.com:99999/h"}, "webhook_url", "invalid port"),
    bad("webhook-space", {"webhook_url": "https://exa mple.com/h"}, "webhook_url", "spaces or control"),
    bad("webhook-crlf", {"webhook_url": "https://example.com/h\r\nX-Evil: 1"}, "webhook_url", "control"),
    bad("email-no-at", {"email": "not-an-email"}, "email", "one address like name@example.com"),
    bad("email-two", {"email": "a@example.com, b@evil.example"}, "email", "one address"),
    bad("email-header-injection", {"email": "a@example.com\r\nBcc: b@evil.example"}, "email", "one address"),
]

# Fields that are not build_request arguments: the notification targets.
NOTIFY_FIELDS = ("webhook_url", "email")


def validate(catalog: Any, fields: dict[str, Any]) -> None:
    """What every door runs: build_request, then the notification targets."""
    args = {**GOOD, **fields}
    notify = {k: args.pop(k, None) for k in NOTIFY_FIELDS}
    build_request(catalog, **args)
    check_notify(notify["webhook_url"], notify["email"])


def assert_clear(message: str, case: Bad) -> None:
    assert message.startswith(f"{case.field}: "), message[:300]
    for text in case.says:
        assert text in message, f"{text!r} not in {message[:300]!r}"
    assert len(message) < MAX_MESSAGE, f"message of {len(message)} characters"
    message.encode("utf-8")  # storable and printable wherever it ends up


# ---------------------------------------------------------------- door 1: build_request


@pytest.mark.timeout(60)  # a rejection that hangs is a failure too
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_build_request_rejects_with_field_and_allowed_values(catalog, case: Bad):
    with pytest.raises(InvalidRequest) as info:
        validate(catalog, case.fields)
    assert info.value.field == case.field
    assert_clear(str(info.value), case)


def test_zoned_and_naive_dates_are_the_same_instants(catalog):
    naive = build_request(
        catalog, **GOOD, filters={"date_from": "2024-06-01T00:00:00", "date_to": "2024-07-01"}
    )
    zoned = build_request(
        catalog,
        **GOOD,
        filters={"date_from": "2024-06-01T02:00:00+02:00", "date_to": "2024-06-30T20:00:00-04:00"},
    )
    assert naive.date_from == zoned.date_from and naive.date_to == zoned.date_to
    assert naive.date_from is not None and naive.date_from.utcoffset().total_seconds() == 0


def test_limits_are_inclusive(catalog):
    """The limits reject only what is above them."""
    req = build_request(
        catalog,
        **GOOD,
        filters={"status": ["s" * 1000] * 1000},
        max_rows_per_file=1_000_000_000,
        link_expiry_hours=168,
    )
    assert len(req.filters["status"]) == 1000
    assert build_request(catalog, tenant_id="t" * 256, resource="orders").tenant_id == "t" * 256
    check_notify("https://example.com:8443/hooks?x=1", "ops+exports@example.com")


# ---------------------------------------------------------------- door 2: a row in export_requests

ROW_COLUMNS = ("tenant_id", "resource", "format", "compression", "filters", "columns", "webhook_url", "email")


def _pg_text(value: Any) -> bool:
    """PostgreSQL text holds neither NUL nor invalid UTF-8: rows with those cannot exist (see
    test_text_postgresql_cannot_store_never_becomes_a_row)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable(fields: dict[str, Any]) -> bool:
    """Whether an app could write these fields into export_requests at all."""
    if not set(fields) <= set(ROW_COLUMNS):
        return False
    row = {**GOOD, **fields}
    for name in ("tenant_id", "resource", "format", "compression", "webhook_url", "email"):
        value = row.get(name)
        nullable = name not in ("tenant_id", "resource")  # format: the column has a default
        if not (value is None and nullable) and not _pg_text(value):
            return False
    columns = row.get("columns")
    if columns is not None:
        items = [c for item in columns for c in (item if isinstance(item, list) else [item])]
        if not isinstance(columns, list) or not all(c is None or _pg_text(c) for c in items):
            return False
    try:  # jsonb: no NaN/Infinity, no NUL, no lone surrogates, no int beyond str()'s limit
        text = json.dumps(row.get("filters", {}), allow_nan=False, ensure_ascii=False)
    except ValueError:
        return False
    return "\\u0000" not in text and _pg_text(text)


ROW_CASES = [c for c in CASES if storable(c.fields)]


# Rows the database refuses at insert (CHECK constraints on sizes).
REFUSED_AT_INSERT = {
    "100k-filter-values",
    "10k-columns",
    "1mb-tenant",
    "1mb-filter-value",
    "1mb-filter-key",
    "1mb-date",
    "1mb-webhook",
    # Every text column is bounded too (resource, format, compression, the columns array).
    "format-sql",
    "1mb-resource",
    "1mb-column",
}


def insert_row(source_url: str, fields: dict[str, Any]) -> str:
    """Insert as an app would, with any JSON in filters and any text[] in columns."""
    row = {**GOOD, **fields}
    with psycopg.connect(source_url, autocommit=True) as conn:
        got = conn.execute(
            """
            INSERT INTO export_requests (tenant_id, resource, format, compression, filters, columns,
                                         webhook_url, email)
            VALUES (%s, %s, coalesce(%s, 'csv'), %s, %s::jsonb, %s, %s, %s) RETURNING id::text
            """,
            [
                row["tenant_id"],
                row["resource"],
                row.get("format"),
                row.get("compression"),
                json.dumps(row.get("filters", {})),
                row.get("columns"),
                row.get("webhook_url"),
                row.get("email"),
            ],
        ).fetchone()
    assert got is not None
    return got[0]


@pytest.fixture(scope="module")
def instance() -> dg.DagsterInstance:
    # One for the module: an ephemeral instance costs ~0.5 s of migrations, and neither the
    # sensor (run keys are kept by the request rows) nor the failing runs depend on its state.
    return dg.DagsterInstance.ephemeral()


def tick(resources: dict[str, Any], instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    # The `with` block tears the resources down after the tick, as the daemon does.
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return export_request_sensor(context).run_requests or []


def test_most_cases_reach_the_row_door():
    # The table must keep exercising the sensor, not quietly drop cases from it.
    assert len(ROW_CASES) >= 70


@pytest.mark.timeout(60)  # a rejection that hangs is a failure too
@pytest.mark.parametrize("case", ROW_CASES, ids=lambda c: c.id)
def test_sensor_fails_the_bad_row_and_still_runs_the_good_one(
    store, dagster_resources, instance, source_url, case: Bad
):
    try:
        bad_id = insert_row(source_url, case.fields)
    except psycopg.errors.CheckViolation as exc:
        # Sizes are CHECK constraints, refused at insert for every door (these
        # rows used to be inserted and failed by the sensor).
        assert case.id in REFUSED_AT_INSERT
        assert "export_requests_size_check" in str(exc) or "export_requests_text_check" in str(exc)
        good_id = store.create(tenant_id="t-006", resource="orders")
        assert [r.run_key for r in tick(dagster_resources, instance)] == [f"{good_id}:1"]
        return
    assert case.id not in REFUSED_AT_INSERT
    good_id = store.create(tenant_id="t-006", resource="orders")
    assert [r.run_key for r in tick(dagster_resources, instance)] == [f"{good_id}:1"]
    row = store.get(bad_id)
    assert row is not None and row.status == "failed" and row.run_id is None
    assert row.completed_at is not None
    assert_clear(row.error or "", case)
    assert tick(dagster_resources, instance) == []  # rejected once, not retried every tick


def test_a_flood_of_bad_rows_does_not_starve_good_ones(store, dagster_resources, instance, source_url):
    """More bad rows than one tick reads (50), good rows among and after them: every good row
    gets exactly one run within a few ticks, every bad row ends failed, nothing stays pending."""
    good: list[str] = []
    bad_ids: list[str] = []
    # The bad rows are one tenant's: lift its cap of active requests for the flood,
    # and its start rate (the bad rows never start, but they take their tenant's turns).
    store.set_tenant_max_active(10_000)
    dagster_resources["export_settings"] = ExportSettings(
        bucket=dagster_resources["export_settings"].bucket,
        prefix=dagster_resources["export_settings"].prefix,
        tenant_starts_per_minute=10_000,
    )
    for i, case in enumerate(ROW_CASES):
        if case.id in REFUSED_AT_INSERT:
            continue
        bad_ids.append(insert_row(source_url, case.fields))
        if i % 20 == 0:
            good.append(store.create(tenant_id=f"t-{i % 9 + 1:03d}", resource="orders"))
    good.append(store.create(tenant_id="t-006", resource="orders"))
    launched: list[str] = []
    for _ in range(len(ROW_CASES) // 50 + 2):
        launched += [r.run_key for r in tick(dagster_resources, instance)]
    assert sorted(launched) == sorted(f"{g}:1" for g in good)
    assert all(store.get(b).status == "failed" for b in bad_ids)  # type: ignore[union-attr]
    assert RequestQueue.on(store.conn).to_launch(limit=1000) == []
    store.set_tenant_max_active(5)


@pytest.mark.parametrize(
    ("filters_json", "says"),
    [
        # PostgreSQL stores these; Python's json cannot load them (4300-digit int limit,
        # recursion limit). Loading used to raise inside the tick, for every row, on every tick.
        ('{"status": 1' + "0" * 5000 + "}", "integer string conversion"),
        ('{"status": ' + "[" * 5000 + "]" * 5000 + "}", "RecursionError"),
    ],
    ids=["5000-digit-number", "nested-5000-deep"],
)
def test_json_python_cannot_read_fails_that_row_only(
    store, dagster_resources, instance, source_url, filters_json, says
):
    bad_id = store.create(tenant_id="t-004", resource="orders")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE export_requests SET filters = %s::jsonb WHERE id = %s", [filters_json, bad_id])
    good_id = store.create(tenant_id="t-006", resource="orders")
    assert [r.run_key for r in tick(dagster_resources, instance)] == [f"{good_id}:1"]
    row = store.get(bad_id)
    assert row is not None and row.status == "failed"
    assert (
        row.error and row.error.startswith("filters: is not JSON this service can read") and says in row.error
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"tenant_id": "t-004\x00"},
        {"filters": {"status": "paid\x00"}},
        {"columns": ["id\x00"]},
        {"tenant_id": "t-\udcff"},
        {"filters": {"status": "\ud800"}},
    ],
    ids=["nul-text", "nul-in-jsonb", "nul-in-array", "undecodable-byte", "lone-surrogate"],
)
def test_text_postgresql_cannot_store_never_becomes_a_row(
    store, dagster_resources, instance, source_url, fields
):
    """The insert fails loudly for the app (nothing stored half-way, nothing truncated), and
    the queue goes on."""
    with pytest.raises((psycopg.DataError, UnicodeEncodeError)):
        insert_row(source_url, fields)
    good_id = store.create(tenant_id="t-006", resource="orders")
    assert [r.run_key for r in tick(dagster_resources, instance)] == [f"{good_id}:1"]
    assert [r.id for r in RequestQueue.on(store.conn).to_launch()] == []
    with psycopg.connect(source_url) as conn:
        assert conn.execute("SELECT count(*) FROM export_requests").fetchone() == (1,)


# ---------------------------------------------------------------- door 3: tenant_export_job run config

# Python types the ExportConfig schema accepts; anything else is Dagster's config error.
CONFIG_TYPES: dict[str, Any] = {
    "tenant_id": str,
    "resource": str,
    "format": str,
    "compression": (str, type(None)),
    "columns": (list, type(None)),
    "filters": dict,
    "max_rows_per_file": (int, type(None)),
    "link_expiry_hours": int,
    "webhook_url": (str, type(None)),
    "email": (str, type(None)),
}


def config_typed(fields: dict[str, Any]) -> bool:
    for name, value in fields.items():
        if (isinstance(value, bool) and name != "filters") or not isinstance(value, CONFIG_TYPES[name]):
            return False
        if name == "columns" and value is not None and not all(isinstance(c, str) for c in value):
            return False
    return True


def json_able(fields: dict[str, Any]) -> bool:
    # Dagster stores run config as JSON: an int beyond str()'s limit never gets to a run.
    try:
        json.dumps(fields)
    except ValueError:
        return False
    return True


CONFIG_CASES = [c for c in CASES if config_typed(c.fields) and json_able(c.fields)]
CONFIG_TYPE_ERRORS = [c for c in CASES if not config_typed(c.fields)]


def run_config(fields: dict[str, Any]) -> dict[str, Any]:
    config = {**GOOD, **fields}
    notify = {k: config.pop(k) for k in NOTIFY_FIELDS if k in config}
    if notify:
        config["notify"] = notify
    return {"ops": {"count_rows": {"config": config}}}


def objects_under(s3_client: Any, bucket: str, prefix: str) -> list[str]:
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda c: c.id)
def test_run_config_fails_at_once_naming_the_field(
    dagster_resources, instance, s3_client, bucket, prefix, case: Bad
):
    result = run_export_job(
        run_config=run_config(case.fields),
        resources=dagster_resources,
        raise_on_error=False,
        instance=instance,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "exports.count_rows"
    # A dagster.Failure with allow_retries=False: bad input is not retried with backoff.
    assert failure.step_failure_data.user_failure_data is not None
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert_clear(failure.step_failure_data.user_failure_data.description or "", case)
    assert objects_under(s3_client, bucket, prefix) == []
    assert open_uploads(s3_client, bucket, prefix) == []


@pytest.mark.parametrize("case", CONFIG_TYPE_ERRORS, ids=lambda c: c.id)
def test_run_config_of_the_wrong_type_is_refused_before_any_run(
    dagster_resources, instance, s3_client, bucket, prefix, case
):
    runs_before = len(instance.get_runs())
    with pytest.raises(dg.DagsterInvalidConfigError) as info:
        run_export_job(run_config=run_config(case.fields), resources=dagster_resources, instance=instance)
    name = next(iter(case.fields))
    assert name in str(info.value)  # Dagster names the config path, e.g. root:ops:count_rows:config:tenant_id
    assert len(instance.get_runs()) == runs_before
    assert objects_under(s3_client, bucket, prefix) == []


# ---------------------------------------------------------------- SQL fragments in values are literals


@dataclass(frozen=True)
class Literal:
    id: str
    fields: dict[str, Any]
    where: str  # SQL over orders for the rows a correct export holds ("false": none at all)


LITERALS = [
    Literal("tenant-or-1-1", {"tenant_id": "t-004' OR '1'='1"}, "false"),
    Literal("tenant-drop-table", {"tenant_id": "t-004'; DROP TABLE orders; --"}, "false"),
    Literal("tenant-like-wildcard", {"tenant_id": "t-00%"}, "false"),
    Literal("tenant-trailing-space", {"tenant_id": "t-004 "}, "false"),
    Literal("tenant-path", {"tenant_id": "../t-005"}, "false"),
    Literal("filter-or-1-1", {"filters": {"status": "' OR 1=1 --"}}, "false"),
    Literal(
        "filter-drop-beside-real-value",
        {"filters": {"status": ["paid", "'; DROP TABLE orders; --"]}},
        "tenant_id = 't-004' AND status = 'paid'",
    ),
    Literal("filter-paren-escape", {"filters": {"currency": "EUR') OR ('1'='1"}}, "false"),
    Literal("date-to-9999-open-end", {"filters": {"date_to": "9999-12-31T23:59:59Z"}}, "tenant_id = 't-004'"),
    Literal("date-from-beyond-9999-utc", {"filters": {"date_from": "9999-12-31T23:00:00-05:00"}}, "false"),
    Literal(
        "date-from-before-year-1-utc",
        {"filters": {"date_from": "0001-01-01T00:00:00+01:00"}},
        "tenant_id = 't-004'",
    ),
    Literal("date-from-null-is-no-bound", {"filters": {"date_from": None}}, "tenant_id = 't-004'"),
    Literal(
        "zoned-month",
        {"filters": {"date_from": "2024-06-01T02:00:00+02:00", "date_to": "2024-06-30T20:00:00-04:00"}},
        "tenant_id = 't-004' AND created_at >= '2024-06-01Z' AND created_at < '2024-07-01Z'",
    ),
]


def table_state(pg: psycopg.Connection) -> tuple[Any, ...]:
    row = pg.execute(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM tenants), "
        "to_regclass('public.export_requests') IS NOT NULL"
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("case", LITERALS, ids=lambda c: c.id)
def test_sql_in_values_is_a_literal_through_sensor_and_run(
    store, dagster_resources, instance, source_url, s3_client, bucket, pg, case: Literal
):
    before = table_state(pg)
    rid = insert_row(source_url, case.fields)
    tenant = {**GOOD, **case.fields}["tenant_id"]
    if not pg.execute("SELECT 1 FROM tenants WHERE id = %s", [tenant]).fetchone():
        # A tenant the tenants table does not list is refused (it used to run and export
        # nothing); the id is still only ever a literal.
        assert tick(dagster_resources, instance) == []
        row = store.get(rid)
        assert row is not None and row.status == "failed" and row.error_code == "invalid_request"
        assert "is not a tenant" in (row.error or "")
        assert table_state(pg) == before
        return
    (req,) = tick(dagster_resources, instance)
    assert req.run_key == f"{rid}:1"
    result = run_export_job(
        run_config=req.run_config,
        resources=dagster_resources,
        tags=req.tags,
        instance=instance,
        raise_on_error=False,
    )
    assert result.success
    row = store.get(rid)
    assert row is not None and row.status == "succeeded"
    expected = pg.execute(f"SELECT count(*) FROM orders WHERE {case.where}").fetchone()[0]
    assert row.rows_exported == expected
    _, rows = csv_rows(s3_client, bucket, read_manifest(s3_client, bucket, row.manifest_key or ""))
    tenant = {**GOOD, **case.fields}["tenant_id"]
    assert len(rows) == expected and {r[1] for r in rows} <= {tenant}  # nobody else's rows
    assert table_state(pg) == before  # nothing dropped, nothing added


# ---------------------------------------------------------------- door 4: the command line


def cli(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    exe = os.path.join(os.path.dirname(sys.executable), "export-pipelines")
    return subprocess.run([exe, "request", *args], capture_output=True, timeout=120, env=os.environ.copy())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # Bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape).
        ((b"--tenant", b"t-\xff\xfe", b"--resource", b"orders"), "tenant_id: must be valid UTF-8"),
        (
            (b"--tenant", b"t-004", b"--resource", b"orders", b"--filter", b"status=\xc3("),
            "filters.status: must be valid UTF-8",
        ),
        (
            (b"--tenant", b"t-004", b"--resource", b"orders", b"--columns", b"id,\xff"),
            "columns: unknown column(s)",
        ),
        (
            ("--tenant", "t-004", "--resource", "invoices"),
            "resource: unknown resource 'invoices'; allowed: orders",
        ),
        (
            ("--tenant", "t-004", "--resource", "orders", "--format", "xml"),
            "format: unknown format 'xml'; allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx",
        ),
        (("--tenant", "t-004", "--resource", "orders", "--date-from", "10000-01-01"), "filters.date_from:"),
        (
            ("--tenant", "t-004", "--resource", "orders", "--webhook-url", "file:///etc/passwd"),
            "webhook_url: must be an http(s)",
        ),
        (
            ("--tenant", "t-004", "--resource", "orders", "--email", "a@x.example, b@y.example"),
            "email: must be one address",
        ),
    ],
    ids=["bytes-tenant", "bytes-filter", "bytes-column", "resource", "format", "date", "webhook", "email"],
)
def test_cli_refuses_bad_input_before_inserting(store, args, says):
    out = cli(*args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert says in out.stderr.decode("utf-8"), out.stderr[-2000:]
    assert b"Traceback" not in out.stderr
    assert RequestQueue.on(store.conn).to_launch() == []


def test_cli_queues_a_good_request(store):
    out = cli("--tenant", "t-004", "--resource", "orders", "--filter", "status=' OR 1=1 --")
    assert out.returncode == 0, out.stderr[-2000:]
    row = store.get(out.stdout.decode().strip())
    assert row is not None and row.status == "pending" and row.filters == {"status": "' OR 1=1 --"}


def test_cli_request_follows_the_one_idempotency_rule(store):
    """`request --idempotency-key` is the API's Idempotency-Key: the same request again prints the
    first request's id (no second row); another request with that key is refused, naming it."""
    args = ("--tenant", "t-004", "--resource", "orders", "--idempotency-key", "nightly-2026-12-01")
    first, again = cli(*args), cli(*args)
    assert first.returncode == 0 and again.returncode == 0, (first.stderr[-2000:], again.stderr[-2000:])
    assert first.stdout.strip() == again.stdout.strip()
    assert [r.id for r in RequestQueue.on(store.conn).to_launch()] == [first.stdout.decode().strip()]
    other = cli(*args, "--format", "jsonl")
    assert other.returncode == 2
    assert b"Idempotency-Key: already used with a different request body" in other.stderr
