"""SQL for one export: every statement built with psycopg.sql, always with the tenant predicate.

Parameters are compared against the column's own type (`col = %s::coltype`), never by casting
the column, so the (tenant, key) index serves every statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.errors import InvalidRequest
from export_pipelines.core.requests.catalog import ResourceSpec
from export_pipelines.core.storage.pg_connect import open_connection

if TYPE_CHECKING:  # request imports the encoders, which import ColumnInfo from here
    from export_pipelines.core.requests.request import ExportRequest

FEED_ALIAS = "_feed"
OP_COLUMN_NAME = "_op"  # request.OP_COLUMN (request imports this module's users)
XID_COLUMN = "_export_xid"  # change_tracking.py installs it
# An incremental delivery's rows, evaluated once per file into this session's temp table.
MATERIALIZED_FEED = "_export_feed_delivery"

DEFAULT_STATEMENT_TIMEOUT_SECONDS = 300

# Session settings every export connection uses: UTC instants, ISO dates, and bounds that
# protect the database from a runaway export.
SESSION_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "statement_timeout": f"{DEFAULT_STATEMENT_TIMEOUT_SECONDS}s",
    "idle_in_transaction_session_timeout": "600s",
    "application_name": "export_pipelines",
}


def session_settings(statement_timeout_seconds: float | None = None) -> dict[str, str]:
    """SESSION_SETTINGS, with the statement timeout an operator chose (None: the default)."""
    if statement_timeout_seconds is None:
        return dict(SESSION_SETTINGS)
    return {**SESSION_SETTINGS, "statement_timeout": f"{round(statement_timeout_seconds * 1000)}ms"}


def session_options(settings: dict[str, str]) -> str:
    """libpq `options` string that applies the session settings at connect time."""
    return " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in settings.items())


def connect(
    conninfo: str, *, autocommit: bool = True, statement_timeout_seconds: float | None = None
) -> psycopg.Connection:
    """A source connection with the export session settings, through `pg_connect.open_connection`
    (the URL checked first; the password never in an error)."""
    options = session_options(session_settings(statement_timeout_seconds))
    return open_connection(conninfo, autocommit=autocommit, options=options)


def introspect_columns(conn: psycopg.Connection, spec: ResourceSpec) -> dict[str, ColumnInfo]:
    """Types of the catalog's columns, read from PostgreSQL; a missing table/column is an error."""
    table = sql.Identifier(spec.table.schema, spec.table.name).as_string(conn)
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, a.atttypmod
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
        """,
        [table],
    ).fetchall()
    if not rows:
        raise InvalidRequest("resource", f"table {spec.table} of resource {spec.name!r} does not exist")
    found = {r[0]: ColumnInfo(r[0], r[1], r[2], r[3]) for r in rows}
    missing = [c for c in spec.columns if c not in found]
    if missing:
        raise InvalidRequest(
            "resource", f"catalog columns {missing} are not in table {spec.table}; fix the catalog"
        )
    return {c: found[c] for c in spec.columns}


@dataclass(frozen=True)
class ExportQuery:
    """The statements of one export. `high_water_mark` bounds every range once it is known."""

    spec: ResourceSpec
    request: ExportRequest
    types: dict[str, ColumnInfo]
    # The feed's rows are in MATERIALIZED_FEED (materialize() ran in this transaction).
    materialized: bool = False

    def where(self, after: Any = None, upto: Any = None) -> tuple[sql.Composable, list[Any]]:
        """Tenant predicate, filters, and the keyset window (after, upto]."""
        spec, req = self.spec, self.request
        parts: list[sql.Composable] = [
            sql.SQL("{} = {}").format(
                sql.Identifier(spec.tenant_column), self._placeholder(spec.tenant_column)
            )
        ]
        params: list[Any] = [req.tenant_id]
        if req.feed is not None:
            # A feed's relation applies the filters itself (a row leaving them is a delete).
            return self._key_window(parts, params, after, upto)
        if req.date_from is not None and spec.time_column:
            parts.append(
                sql.SQL("{} >= {}").format(
                    sql.Identifier(spec.time_column), self._placeholder(spec.time_column)
                )
            )
            params.append(req.date_from)
        if req.date_to is not None and spec.time_column:
            parts.append(
                sql.SQL("{} < {}").format(
                    sql.Identifier(spec.time_column), self._placeholder(spec.time_column)
                )
            )
            params.append(req.date_to)
        for column, values in req.filters.items():
            parts.append(sql.SQL("{} = ANY(%s::{}[])").format(sql.Identifier(column), self._type(column)))
            params.append(list(values))
        return self._key_window(parts, params, after, upto)

    def _key_window(
        self, parts: list[sql.Composable], params: list[Any], after: Any, upto: Any
    ) -> tuple[sql.Composable, list[Any]]:
        spec = self.spec
        if after is not None:
            parts.append(sql.SQL("{} > {}").format(sql.Identifier(spec.key), self._placeholder(spec.key)))
            params.append(after)
        if upto is not None:
            parts.append(sql.SQL("{} <= {}").format(sql.Identifier(spec.key), self._placeholder(spec.key)))
            params.append(upto)
        return sql.SQL(" AND ").join(parts), params

    def _placeholder(self, column: str) -> sql.Composable:
        return sql.SQL("%s::{}").format(self._type(column))

    def _type(self, column: str) -> sql.Composable:
        # format_type() output is a valid, already-quoted type name: it comes from PostgreSQL.
        return sql.SQL(self.types[column].pg_type)  # type: ignore[arg-type]

    @property
    def table(self) -> sql.Composable:
        """What rows are read from: the table, or for a feed's delivery its change relation."""
        if self.request.feed is not None:
            if self.materialized:
                return sql.SQL("pg_temp.{} AS {}").format(
                    sql.Identifier(MATERIALIZED_FEED), sql.Identifier(FEED_ALIAS)
                )
            return feed_relation(self.spec, self.request, self.types)
        return sql.Identifier(self.spec.table.schema, self.spec.table.name)

    @property
    def can_materialize(self) -> bool:
        """An incremental delivery: its change relation is worth evaluating once per file."""
        feed = self.request.feed
        return feed is not None and feed.mode == "incremental" and feed.previous_snapshot is not None

    def materialize(self) -> list[sql.Composable]:
        """Statements that evaluate the change relation once, in the open transaction's snapshot,
        into a temp table dropped at its commit. Without it every statement of the file (the
        batch bounds, the COPY, the delete count) re-ran the change-set scan, and the COPY and
        the count each joined every changed key to the table. Run them with params `[]` (the
        relation's literals escape their %)."""
        name = sql.Identifier(MATERIALIZED_FEED)
        return [
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT * FROM {}").format(
                name, feed_relation(self.spec, self.request, self.types)
            ),
            # The keyset batches read it by key: an index keeps each batch a range, not a sort.
            sql.SQL("CREATE INDEX ON pg_temp.{} ({})").format(name, sql.Identifier(self.spec.key)),
            sql.SQL("ANALYZE pg_temp.{}").format(name),
        ]

    @property
    def qualifier(self) -> sql.Composable:
        """How a column of `table` is qualified."""
        if self.request.feed is not None:
            return sql.Identifier(FEED_ALIAS)
        return self.table

    @property
    def select_list(self) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(c) for c in self.request.columns)

    def count_and_high_water_mark(self) -> tuple[sql.Composable, list[Any]]:
        where, params = self.where()
        return (
            sql.SQL("SELECT count(*), max({key}) FROM {table} WHERE {where}").format(
                key=sql.Identifier(self.spec.key), table=self.table, where=where
            ),
            params,
        )

    def next_range(self, after: Any, upto: Any, limit: int) -> tuple[sql.Composable, list[Any]]:
        """Rows and last key of the next keyset batch: `WHERE key > after ORDER BY key LIMIT n`."""
        where, params = self.where(after, upto)
        return (
            sql.SQL(
                "SELECT count(*), min(k), max(k) FROM (SELECT {key} AS k FROM {table} WHERE {where} "
                "ORDER BY {key} LIMIT %s) AS batch"
            ).format(key=sql.Identifier(self.spec.key), table=self.table, where=where),
            [*params, limit],
        )

    def select_range(self, after: Any, upto: Any) -> tuple[sql.Composable, list[Any]]:
        where, params = self.where(after, upto)
        return (
            sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY {key}").format(
                cols=self.select_list, table=self.table, where=where, key=sql.Identifier(self.spec.key)
            ),
            params,
        )

    def copy_range(self, after: Any, upto: Any) -> tuple[sql.Composable, list[Any]]:
        select, params = self.select_range(after, upto)
        return sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(select), params


@dataclass(frozen=True)
class RenderedQuery(ExportQuery):
    """The same rows and keyset windows, with each column rendered by an SQL expression.

    Formats use it to let PostgreSQL do per-value work at C speed (bytea as base64, Excel-safe
    text, JSON objects) instead of Python. `expressions` is one expression per requested column,
    in order; with `json_rows`, each row is one JSON object (`row_to_json`) and COPY emits the
    JSON text unchanged, one object per line.
    """

    expressions: tuple[sql.Composable, ...] = ()
    json_rows: bool = False

    @property
    def select_list(self) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(expr, sql.Identifier(name))
            for expr, name in zip(self.expressions, self.request.columns, strict=True)
        )

    def select_range(self, after: Any, upto: Any) -> tuple[sql.Composable, list[Any]]:
        where, params = self.where(after, upto)
        # ORDER BY the table's key column, qualified: a bare name would mean the rendered
        # output column of the same name (text order instead of key order).
        select = sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY {qualifier}.{key}").format(
            cols=self.select_list,
            table=self.table,
            where=where,
            qualifier=self.qualifier,
            key=sql.Identifier(self.spec.key),
        )
        if not self.json_rows:
            return select, params
        # A subquery with ORDER BY is never flattened, so rows keep the key order.
        return sql.SQL("SELECT row_to_json(r) FROM ({}) AS r").format(select), params

    def copy_range(self, after: Any, upto: Any) -> tuple[sql.Composable, list[Any]]:
        if not self.json_rows:
            return super().copy_range(after, upto)
        select, params = self.select_range(after, upto)
        # CSV mode with quote and delimiter bytes that JSON text never contains raw (JSON escapes
        # every control character): COPY writes each object as is, no quoting, no escaping.
        return (
            sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')").format(select),
            params,
        )


class _Literal(sql.Literal):
    """A literal inside a statement that also has %s parameters: its own % are escaped, or psycopg
    would read them as placeholders (a tenant id may hold a %)."""

    def as_bytes(self, context: Any = None) -> bytes:
        return super().as_bytes(context).replace(b"%", b"%%")


def feed_relation(spec: ResourceSpec, request: ExportRequest, types: dict[str, ColumnInfo]) -> sql.Composable:
    """A feed delivery's rows as a derived table: every catalog column and `_op`.

    full: the tenant's rows matching the filters, all `upsert`. incremental: the keys whose row or
    tombstone carries an xid not visible in the previous snapshot S (`xid >= pg_snapshot_xmin(S)`
    bounds an index range; `NOT pg_visible_in_snapshot(xid, S)` decides), as they are in this
    snapshot: `upsert` with the row, or `delete` with the key when no row (matching the filters)
    remains. Values are literals, bound client-side by psycopg: the relation sits inside
    every statement of the export without shifting its parameters."""
    feed = request.feed
    assert feed is not None
    table = sql.Identifier(spec.table.schema, spec.table.name)

    def typed(value: Any, column: str) -> sql.Composable:
        return sql.SQL("{}::{}").format(_Literal(value), sql.SQL(types[column].pg_type))  # type: ignore[arg-type]

    tenant = typed(request.tenant_id, spec.tenant_column)
    filters = [
        sql.SQL("t.{} = ANY({}::{}[])").format(
            sql.Identifier(column),
            _Literal(list(values)),
            sql.SQL(types[column].pg_type),  # type: ignore[arg-type]
        )
        for column, values in request.filters.items()
    ]
    key, tcol = sql.Identifier(spec.key), sql.Identifier(spec.tenant_column)
    if feed.mode == "full" or feed.previous_snapshot is None:
        where = sql.SQL(" AND ").join([sql.SQL("t.{} = {}").format(tcol, tenant), *filters])
        cols = sql.SQL(", ").join(sql.SQL("t.{0} AS {0}").format(sql.Identifier(c)) for c in spec.columns)
        return sql.SQL(
            "(SELECT {cols}, 'upsert'::text AS {op} FROM {table} t WHERE {where}) AS {alias}"
        ).format(
            cols=cols,
            op=sql.Identifier(OP_COLUMN_NAME),
            table=table,
            where=where,
            alias=sql.Identifier(FEED_ALIAS),
        )
    snap = sql.SQL("{}::pg_snapshot").format(_Literal(feed.previous_snapshot))
    changed = sql.SQL("{xid} >= pg_snapshot_xmin({snap}) AND NOT pg_visible_in_snapshot({xid}, {snap})")
    rows_changed = changed.format(xid=sql.SQL("t.{}").format(sql.Identifier(XID_COLUMN)), snap=snap)
    matching = sql.SQL(" AND ").join(filters) if filters else sql.SQL("true")
    # Upserts straight from the xid index's range, each row read once where it lies. Deletes: a
    # changed row that no longer matches the filters, or a tombstoned key with no matching row now.
    # (A key deleted in the window and inserted again carries the reinsert's xid, in the window too:
    # the reinsert committed after the delete, so it cannot be visible in S when the delete is not.
    # The tombstones' check below is a primary-key probe, for deleted keys only.)
    upsert_cols = sql.SQL(", ").join(sql.SQL("t.{0} AS {0}").format(sql.Identifier(c)) for c in spec.columns)
    delete_cols = []
    for c in spec.columns:
        if c == spec.key:
            delete_cols.append(sql.SQL("gone.k AS {}").format(key))
        elif c == spec.tenant_column:
            delete_cols.append(sql.SQL("{} AS {}").format(tenant, tcol))
        else:
            delete_cols.append(
                sql.SQL("NULL::{} AS {}").format(sql.SQL(types[c].pg_type), sql.Identifier(c))  # type: ignore[arg-type]
            )
    key_type = sql.SQL(types[spec.key].pg_type)  # type: ignore[arg-type]
    return sql.SQL(
        "(SELECT {upsert_cols}, 'upsert'::text AS {op} FROM {table} t "
        "WHERE t.{tcol} = {tenant} AND {rows_changed} AND {matching} "
        "UNION ALL "
        "SELECT {delete_cols}, 'delete'::text AS {op} FROM ("
        "SELECT t.{key} AS k FROM {table} t "
        "WHERE t.{tcol} = {tenant} AND {rows_changed} AND NOT coalesce({matching}, false) "
        "UNION SELECT (d.pk ->> {key_name})::{key_type} FROM public.export_tombstones d "
        "WHERE d.resource = {resource} AND d.tenant_id = {tenant_text} AND {tombs_changed} "
        "AND NOT EXISTS (SELECT 1 FROM {table} t WHERE t.{tcol} = {tenant} "
        "AND t.{key} = (d.pk ->> {key_name})::{key_type} AND {matching})"
        ") AS gone) AS {alias}"
    ).format(
        upsert_cols=upsert_cols,
        delete_cols=sql.SQL(", ").join(delete_cols),
        op=sql.Identifier(OP_COLUMN_NAME),
        table=table,
        tcol=tcol,
        tenant=tenant,
        rows_changed=rows_changed,
        matching=matching,
        key=key,
        key_name=_Literal(spec.key),
        key_type=key_type,
        resource=_Literal(spec.name),
        tenant_text=_Literal(str(request.tenant_id)),
        tombs_changed=changed.format(xid=sql.SQL("d.xid"), snap=snap),
        alias=sql.Identifier(FEED_ALIAS),
    )
