"""Planning an export: validate against the live schema, fix the cut (row count and high-water
mark) in one snapshot, and fingerprint what decides the bytes so a retry reuses only its own cut."""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.engine.change_tracking import check_installed, tracking_id
from export_pipelines.core.engine.checkpoints import CheckpointStore, Cut
from export_pipelines.core.engine.query import ExportQuery, connect, introspect_columns
from export_pipelines.core.errors import InvalidRequest
from export_pipelines.core.formats import DEFAULT_PDF_MAX_ROWS
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.core.requests.request import OP_COLUMN, S3_MAX_KEY_BYTES, ExportRequest
from export_pipelines.core.storage.layout import ExportLocation

# How many files one export may make: each is a multipart upload, a manifest entry and a presigned
# link in the webhook. 10,000 is far above any real split, far below 10M objects for a big tenant.
MAX_FILES_PER_EXPORT = 10_000
# The longest name a file of the folder gets ("part-00001.parquet", "manifest.json", ...), with room.
_LONGEST_FILE_NAME_BYTES = 32

# How long the request-time PDF count may take (milliseconds). The count stops at cap + 1 rows, so
# with the (tenant, key) index it is a few milliseconds; a filter on an unindexed column may make
# it scan. Past this the request is accepted and the planner's exact count decides, as before.
PDF_PRECHECK_TIMEOUT_MS = 300

# Bump when an encoder's bytes change: old checkpoints are then not reused
# (2: JSON bigint, numeric and floats as strings).
CHECKPOINT_VERSION = 2


@dataclass(frozen=True)
class ExportPlan:
    """What plan_export decided: the validated request, column types, the cut, the place."""

    request: ExportRequest
    types: dict[str, ColumnInfo]  # every catalog column of the resource
    rows_total: int
    high_water_mark: Any  # max key at plan time: rows with a larger key are out
    location: ExportLocation
    key_column: str
    # When the first attempt planned the export (epoch seconds): a resumed PDF keeps its title.
    planned_at: float = 0.0
    fingerprint: str = ""  # what shapes the bytes: a checkpoint is reused only for the same one
    resumed: bool = False  # the cut (and maybe files) came from an earlier attempt's checkpoint
    primary_key: tuple[str, ...] = ()

    @property
    def columns(self) -> list[ColumnInfo]:
        """The exported columns, in output order."""
        return [self.types[c] for c in self.request.columns]

    @property
    def key_type(self) -> str:
        return self.types[self.key_column].pg_type


def request_fingerprint(request: ExportRequest, key_column: str, types: dict[str, ColumnInfo]) -> str:
    """A digest of everything that decides an export's bytes (not its id or link expiry)."""
    fields = {k: v for k, v in asdict(request).items() if k not in ("export_id", "link_expiry_hours")}
    shape = {
        "version": CHECKPOINT_VERSION,
        "request": fields,
        "key": key_column,
        "types": [types[c].pg_type for c in request.columns],
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()


def plan_export(
    conninfo: str,
    catalog: Catalog,
    request: ExportRequest,
    prefix: str,
    checkpoints: CheckpointStore | None = None,
    *,
    statement_timeout_seconds: float | None = None,
    pdf_max_rows: int = DEFAULT_PDF_MAX_ROWS,
) -> ExportPlan:
    """Count the rows (progress denominator) and fix the high-water mark, in one snapshot.

    With a checkpoint store, a retry of the same export reuses the cut its first attempt fixed,
    so rows inserted between a crash and the resume stay out, as they would have.
    """
    spec = catalog.resource(request.resource)
    location = ExportLocation(prefix, request.tenant_id, request.resource, request.export_id)
    check_key_length(location)
    if request.feed is not None:
        # A delivery is read in one snapshot, whose changes the next delivery starts from: a retry
        # starts over in a fresh snapshot, never continues another attempt's files.
        checkpoints = None
    with (
        connect(conninfo, statement_timeout_seconds=statement_timeout_seconds) as conn,
        conn.transaction(),
    ):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        types = introspect_columns(conn, spec)
        if request.feed is not None:
            request = feed_request(conn, spec, request, types)
            types = {**types, OP_COLUMN: ColumnInfo(OP_COLUMN, "text", "text", -1)}
        fingerprint = request_fingerprint(request, spec.key, types)
        cut = checkpoints.cut(location.folder, types[spec.key].pg_type) if checkpoints else None
        resumed = cut is not None and cut.fingerprint == fingerprint
        if not resumed:
            query = ExportQuery(spec, request, types)
            stmt, params = query.count_and_high_water_mark()
            row = conn.execute(stmt, params).fetchone()
            rows_total, hwm = (int(row[0]), row[1]) if row else (0, None)
            if request.feed is not None:
                hwm = None  # no key bound: the read's own snapshot decides what is in
            cut = Cut(fingerprint, rows_total, hwm, time.time())
    assert cut is not None
    check_file_count(cut.rows_total, request.max_rows_per_file)
    if request.format == "pdf":
        check_pdf_rows(cut.rows_total, pdf_max_rows)  # refused before anything is written
    if checkpoints and not resumed:
        checkpoints.save_cut(location.folder, cut)
    if checkpoints:
        checkpoints.claim(location.folder)
    return ExportPlan(
        request=request,
        types=types,
        rows_total=cut.rows_total,
        high_water_mark=cut.high_water_mark,
        location=location,
        key_column=spec.key,
        primary_key=spec.primary_key,
        planned_at=cut.planned_at if cut.planned_at is not None else time.time(),
        fingerprint=fingerprint,
        resumed=resumed,
    )


def schema_of(request: ExportRequest, types: dict[str, ColumnInfo]) -> tuple[tuple[str, str], ...]:
    """A delivery's schema: its columns (not `_op`) and their PostgreSQL types, in output order."""
    return tuple((c, types[c].pg_type) for c in request.columns if c != OP_COLUMN)


def schema_hash(schema: tuple[tuple[str, str], ...]) -> str:
    return hashlib.sha256(json.dumps([list(c) for c in schema]).encode()).hexdigest()


def feed_request(conn: Any, spec: Any, request: ExportRequest, types: dict[str, ColumnInfo]) -> ExportRequest:
    """A feed delivery's request as read in this snapshot: `_op` added, one file (one snapshot),
    and full instead of incremental when a column's type changed since the previous delivery
    (its rows could not be merged into what the tenant holds)."""
    feed = request.feed
    assert feed is not None
    missing = [c for c in spec.primary_key or (spec.key,) if c not in request.columns]
    if missing:
        raise InvalidRequest(
            "columns",
            f"a feed's columns must include the primary key {list(spec.primary_key)}; missing {missing}",
        )
    columns = tuple(c for c in request.columns if c != OP_COLUMN)
    tracking = tracking_id(conn, spec) if spec.change_tracking else None
    if feed.mode == "incremental" and feed.previous_snapshot is not None:
        check_installed(conn, spec)
        if feed.previous_tracking_id != tracking:
            feed = replace(
                feed,
                mode="full",
                reason="change tracking was installed or reinstalled since the previous delivery",
            )
        if feed.previous_schema is not None:
            before = dict(feed.previous_schema)
            changed = [c for c in columns if c in before and before[c] != types[c].pg_type]
            if changed:
                feed = replace(
                    feed,
                    mode="full",
                    reason=f"the type of {', '.join(changed)} changed since the previous delivery",
                )
    elif feed.mode == "incremental":
        feed = replace(feed, mode="full", reason=feed.reason or "a feed's first delivery is full")
    return replace(
        request,
        columns=(*columns, OP_COLUMN),
        max_rows_per_file=None,
        feed=replace(feed, tracking_id=tracking),
    )


def check_key_length(location: ExportLocation) -> None:
    """An S3 key over 1,024 bytes is refused by S3 on every attempt: refuse the request instead."""
    longest = len(location.folder.encode()) + _LONGEST_FILE_NAME_BYTES
    if longest > S3_MAX_KEY_BYTES:
        raise InvalidRequest(
            "tenant_id",
            f"makes S3 keys of up to {longest} bytes with this prefix, resource and export id; "
            f"S3 allows at most {S3_MAX_KEY_BYTES}: use a shorter tenant id",
        )


def check_file_count(rows_total: int, max_rows_per_file: int | None) -> None:
    """At most MAX_FILES_PER_EXPORT files: refused before anything is written."""
    if not max_rows_per_file:
        return
    files = -(-rows_total // max_rows_per_file)
    if files > MAX_FILES_PER_EXPORT:
        raise InvalidRequest(
            "max_rows_per_file",
            f"{max_rows_per_file:,} rows per file would make {files:,} files for {rows_total:,} rows; "
            f"an export makes at most {MAX_FILES_PER_EXPORT:,} files: raise max_rows_per_file to at "
            f"least {-(-rows_total // MAX_FILES_PER_EXPORT):,} or leave it empty",
        )


def check_pdf_rows(rows_total: int, cap: int, *, exact: bool = True) -> None:
    """A PDF is a report for people: more rows than the cap belong in a machine format.
    `exact=False`: rows_total is a count that stopped past the cap (pdf_rows_at_most)."""
    if rows_total > cap:
        matches = f"{rows_total:,}" if exact else f"more than {cap:,}"
        raise InvalidRequest(
            "format",
            f"a PDF holds at most {cap:,} rows and this request matches {matches}: "
            "use csv or xlsx, or narrow the filters",
        )


def pdf_rows_at_most(
    conn: psycopg.Connection[Any], catalog: Catalog, request: ExportRequest, cap: int
) -> int | None:
    """The request's matching rows, counted up to cap + 1 (`SELECT count(*) FROM (... LIMIT cap+1)`),
    on a lent connection, within PDF_PRECHECK_TIMEOUT_MS; None when that is not known cheaply (the
    count timed out, the table is not there): then the planner's check decides at run time. A
    request over the cap can so be refused before it is queued, without a count of a big tenant's
    every row on the request path."""
    spec = catalog.resource(request.resource)
    with suppress(psycopg.Error, InvalidRequest), conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = {int(PDF_PRECHECK_TIMEOUT_MS)}")
        query = ExportQuery(spec, request, introspect_columns(conn, spec))
        where, params = query.where()
        capped = "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} LIMIT %s) AS capped"
        stmt = sql.SQL(capped).format(table=query.table, where=where)
        row = conn.execute(stmt, [*params, cap + 1]).fetchone()
        return int(row[0]) if row else None
    return None


def report_context(plan: ExportPlan) -> dict[str, str]:
    """What a report's title shows (PDF): tenant, resource, filters, when the export was planned."""
    req = plan.request
    filters = [f"{k} = {', '.join(v)}" for k, v in sorted(req.filters.items())]
    if req.date_from:
        filters.append(f"from {req.date_from.isoformat()}")
    if req.date_to:
        filters.append(f"before {req.date_to.isoformat()}")
    return {
        "tenant": req.tenant_id,
        "resource": req.resource,
        "filters": "; ".join(filters),
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(plan.planned_at)),
    }
