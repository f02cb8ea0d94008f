"""Change tracking on a tenant table: what a feed's incremental delivery reads (docs/feeds.md).

For each catalog resource with `change_tracking: true`, installed idempotently and online:
- a column `_export_xid xid8`, set to `pg_current_xact_id()` by a BEFORE INSERT OR UPDATE trigger
  (the top-level transaction's id, also for writes inside savepoints);
- an index on (tenant column, `_export_xid`), built CONCURRENTLY: a delivery reads a range of it;
- the `export_tombstones` table (resource, tenant_id, pk jsonb, xid xid8), filled by an AFTER
  DELETE trigger, and by an AFTER UPDATE trigger when an update moves a row to another key or tenant
  (the old key is gone as surely as if deleted).

This module holds the SQL of the tracked columns, their triggers and the tombstone table. Every
step takes its lock briefly (a `lock_timeout`, retried), and the optional backfill fills the column
of existing rows in batches of their own transactions, so a big table keeps taking writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from export_pipelines.core.errors import InvalidRequest
from export_pipelines.core.requests.catalog import Catalog, ResourceSpec
from export_pipelines.core.storage.pg_connect import open_connection

XID_COLUMN = "_export_xid"
TOMBSTONES = sql.Identifier("public", "export_tombstones")
# A DDL step waits at most this long for its lock, then gives way to the application's writes and
# tries again: an ALTER queued behind a long transaction would otherwise block every writer.
LOCK_TIMEOUT = "2s"
LOCK_ATTEMPTS = 30

TOMBSTONE_TABLE = """
CREATE TABLE IF NOT EXISTS public.export_tombstones (
    resource    text NOT NULL,
    tenant_id   text NOT NULL,
    pk          jsonb NOT NULL,
    xid         xid8 NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS export_tombstones_xid_idx
    ON public.export_tombstones (resource, tenant_id, xid);
CREATE INDEX IF NOT EXISTS export_tombstones_prune_idx ON public.export_tombstones (xid);

CREATE OR REPLACE FUNCTION public.export_track_xid() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW._export_xid := pg_current_xact_id();
    RETURN NEW;
END
$fn$;

-- Arguments: the resource, the tenant column, then the primary-key columns.
CREATE OR REPLACE FUNCTION public.export_track_tombstone() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $fn$
DECLARE
    old_row jsonb := to_jsonb(OLD);
    pk jsonb := '{}'::jsonb;
    i int;
BEGIN
    FOR i IN 2 .. TG_NARGS - 1 LOOP
        pk := pk || jsonb_build_object(TG_ARGV[i], old_row -> TG_ARGV[i]);
    END LOOP;
    INSERT INTO public.export_tombstones (resource, tenant_id, pk, xid)
        VALUES (TG_ARGV[0], old_row ->> TG_ARGV[1], pk, pg_current_xact_id());
    RETURN NULL;
END
$fn$;
"""


@dataclass(frozen=True)
class Installed:
    resource: str
    table: str
    backfilled_rows: int = 0
    seconds: float = 0.0


def _names(spec: ResourceSpec) -> dict[str, sql.Composable]:
    base = f"{spec.name}"[:40]
    return {
        "table": sql.Identifier(spec.table.schema, spec.table.name),
        "xid": sql.Identifier(XID_COLUMN),
        "tenant": sql.Identifier(spec.tenant_column),
        "key": sql.Identifier(spec.key),
        "xid_trigger": sql.Identifier(f"{base}_export_xid"),
        "del_trigger": sql.Identifier(f"{base}_export_tombstone_del"),
        "upd_trigger": sql.Identifier(f"{base}_export_tombstone_upd"),
        "index": sql.Identifier(f"{spec.table.name[:40]}_export_xid_idx"),
        "qualified_index": sql.Identifier(spec.table.schema, f"{spec.table.name[:40]}_export_xid_idx"),
        "index_name": sql.Literal(f"{spec.table.name[:40]}_export_xid_idx"),
        "schema": sql.Literal(spec.table.schema),
    }


def _with_lock_retries(conn: psycopg.Connection[Any], statement: sql.Composable) -> None:
    """Run one DDL statement in its own short transaction, retried when its lock is not granted
    within LOCK_TIMEOUT (the application's writes go first)."""
    for attempt in range(LOCK_ATTEMPTS):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                conn.execute(statement)
            return
        except psycopg.errors.LockNotAvailable:
            if attempt == LOCK_ATTEMPTS - 1:
                raise
            time.sleep(min(0.2 * (attempt + 1), 2.0))


def install(
    conninfo: str,
    spec: ResourceSpec,
    *,
    backfill: bool = False,
    batch_rows: int = 10_000,
    on_batch: Callable[[int], None] | None = None,
) -> Installed:
    """Install change tracking on the resource's table (idempotent, online).

    ADD COLUMN without a default changes only the catalog (no rewrite); the triggers' brief lock
    waits for the table's open write transactions to end, so once this returns every write is
    tracked, and no transaction still open wrote an untracked row. The index is built
    CONCURRENTLY. Rows written before tracking keep a NULL column: they are older than any feed's
    first (full) delivery. `backfill` fills them in batches anyway (for a NOT NULL column or a
    uniform index), one short transaction per batch."""
    if not spec.change_tracking:
        raise InvalidRequest("resource", f"resource {spec.name!r} does not have change_tracking: true")
    started = time.monotonic()
    n = _names(spec)
    pk_args = sql.SQL(", ").join(sql.Literal(c) for c in spec.primary_key)
    moved = sql.SQL(" OR ").join(
        sql.SQL("OLD.{c} IS DISTINCT FROM NEW.{c}").format(c=sql.Identifier(c))
        for c in dict.fromkeys([spec.tenant_column, *spec.primary_key])
    )
    moved_cols = sql.SQL(", ").join(
        sql.Identifier(c) for c in dict.fromkeys([spec.tenant_column, *spec.primary_key])
    )
    args = sql.SQL("{}, {}, {}").format(sql.Literal(spec.name), sql.Literal(spec.tenant_column), pk_args)
    with open_connection(conninfo, autocommit=True, options="-c statement_timeout=0") as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('export_pipelines_migrations'))")
            conn.execute(TOMBSTONE_TABLE)
        steps = [
            sql.SQL("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {xid} xid8").format(**n),
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {xid_trigger} BEFORE INSERT OR UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION public.export_track_xid()"
            ).format(**n),
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {del_trigger} AFTER DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION public.export_track_tombstone({args})"
            ).format(args=args, **n),
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {upd_trigger} AFTER UPDATE OF {cols} ON {table} "
                "FOR EACH ROW WHEN ({moved}) EXECUTE FUNCTION public.export_track_tombstone({args})"
            ).format(cols=moved_cols, moved=moved, args=args, **n),
        ]
        for step in steps:
            _with_lock_retries(conn, step)
        _build_index(conn, n)
        rows = _backfill(conn, spec, batch_rows, on_batch) if backfill else 0
    return Installed(spec.name, str(spec.table), rows, time.monotonic() - started)


def uninstall(conninfo: str, spec: ResourceSpec, *, drop_column: bool = False) -> None:
    """Turn change tracking off: drop the triggers (writes cost nothing more at once) and the
    resource's tombstones; with `drop_column`, also the index and the column. Feeds of the resource
    must then be full (or tracking installed again and each feed given a full refresh)."""
    n = _names(spec)
    with open_connection(conninfo, autocommit=True, options="-c statement_timeout=0") as conn:
        for trigger in ("xid_trigger", "del_trigger", "upd_trigger"):
            _with_lock_retries(conn, sql.SQL("DROP TRIGGER IF EXISTS {} ON {table}").format(n[trigger], **n))
        if conn.execute("SELECT to_regclass('public.export_tombstones')").fetchone()[0]:
            conn.execute("DELETE FROM public.export_tombstones WHERE resource = %s", [spec.name])
        if drop_column:
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {qualified_index}").format(**n))
            _with_lock_retries(conn, sql.SQL("ALTER TABLE {table} DROP COLUMN IF EXISTS {xid}").format(**n))


def _build_index(conn: psycopg.Connection[Any], n: dict[str, sql.Composable]) -> None:
    """CREATE INDEX CONCURRENTLY; an invalid index left by an interrupted build is rebuilt."""
    row = conn.execute(
        sql.SQL(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace s ON s.oid = c.relnamespace WHERE c.relname = {index_name} "
            "AND s.nspname = {schema}"
        ).format(**n)
    ).fetchone()
    if row is not None and row[0]:
        return
    if row is not None:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {qualified_index}").format(**n))
    conn.execute(
        sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} ({tenant}, {xid})").format(**n)
    )


def _backfill(
    conn: psycopg.Connection[Any],
    spec: ResourceSpec,
    batch_rows: int,
    on_batch: Callable[[int], None] | None,
) -> int:
    """Fill the column of rows written before tracking, `batch_rows` at a time in key order (the
    (tenant, key) index), each batch its own transaction: row locks for a moment, no table lock."""
    n = _names(spec)
    stmt = sql.SQL(
        "WITH batch AS (SELECT ctid FROM {table} WHERE {xid} IS NULL LIMIT %s FOR UPDATE SKIP LOCKED) "
        "UPDATE {table} t SET {xid} = pg_current_xact_id() FROM batch WHERE t.ctid = batch.ctid"
    ).format(**n)
    total = 0
    while True:
        with conn.transaction():
            cur = conn.execute(stmt, [batch_rows])
            done = cur.rowcount
        total += done
        if on_batch:
            on_batch(total)
        if done == 0:
            return total


def install_all(conninfo: str, catalog: Catalog) -> tuple[list[Installed], list[ResourceSpec]]:
    """`install` for every resource of the catalog with change_tracking: true whose table exists;
    the others are returned apart (an app's tables may come after the project's migration)."""
    tracked = [spec for spec in catalog.resources.values() if spec.change_tracking]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        missing = [
            spec
            for spec in tracked
            if conn.execute(
                "SELECT to_regclass(%s) IS NULL",
                [sql.Identifier(spec.table.schema, spec.table.name).as_string(conn)],
            ).fetchone()[0]
        ]
    return [install(conninfo, spec) for spec in tracked if spec not in missing], missing


def tracking_id(conn: psycopg.Connection[Any], spec: ResourceSpec) -> int | None:
    """The oid of the table's xid trigger (None: not installed). It changes when tracking is turned
    off and on again, so a delivery can tell that writes in between went untracked."""
    row = conn.execute(
        "SELECT oid::bigint FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
        [sql.Identifier(spec.table.schema, spec.table.name).as_string(conn), f"{spec.name[:40]}_export_xid"],
    ).fetchone()
    return int(row[0]) if row else None


def check_installed(conn: psycopg.Connection[Any], spec: ResourceSpec) -> None:
    """A feed's incremental delivery needs the column and its triggers: say how to get them."""
    row = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
        [sql.Identifier(spec.table.schema, spec.table.name).as_string(conn), f"{spec.name[:40]}_export_xid"],
    ).fetchone()
    if not spec.change_tracking or not row or not row[0]:
        raise InvalidRequest(
            "mode",
            f"resource {spec.name!r} has no change tracking installed: set change_tracking: true and "
            "primary_key in the catalog and run `export-pipelines migrate` (or use mode full)",
        )


def prune_tombstones(conn: psycopg.Connection[Any], feed_snapshots: list[str]) -> int:
    """Delete the tombstones every feed has moved past. A delivery reads tombstones with
    `xid >= pg_snapshot_xmin(S)` of its feed's last succeeded delivery S; below the smallest such
    xmin no feed reads any. With no feed (or none delivered yet: a first delivery is full), the
    bound is the current snapshot's xmin: every finished transaction's tombstones go.

    Nothing is pruned while a feed's delivery is active: its snapshot is not recorded yet. A delivery
    made after this statement's snapshot reads in a later snapshot, whose xmin is at least this one's."""
    cur = conn.execute(
        """
        DELETE FROM public.export_tombstones
        WHERE xid < coalesce(
            (SELECT min(pg_snapshot_xmin(s::pg_snapshot)) FROM unnest(%s::text[]) AS s),
            pg_snapshot_xmin(pg_current_snapshot()))
          AND NOT EXISTS (SELECT 1 FROM public.export_requests
                          WHERE feed_id IS NOT NULL AND status IN ('pending', 'queued', 'running'))
        """,
        [feed_snapshots],
    )
    return cur.rowcount
