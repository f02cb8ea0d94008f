"""Reading an export's rows in keyset batches: `WHERE key > last ORDER BY key LIMIT n`.

Each batch's bounds come from a cheap index-only query; then its rows are streamed:
- `PgCsvSource`: `COPY (SELECT ...) TO STDOUT (FORMAT csv)` read by psycopg, so PostgreSQL renders
  and quotes every value at C speed;
- `ArrowSource`: the same SELECT read Arrow-natively by ADBC (binary COPY under the hood).
Each file is read inside one REPEATABLE READ transaction (one snapshot per file), and every
batch is bounded above by the export's high-water mark, so rows added later are all out.
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import pq, sql

from export_pipelines.core.engine.encoders.special_values import Counter, aggregates
from export_pipelines.core.engine.query import ExportQuery, connect, session_settings
from export_pipelines.core.memory import settle_allocators
from export_pipelines.core.storage.pg_connect import scrub

if TYPE_CHECKING:  # pyarrow is imported by ArrowSource alone: a CSV export never loads it
    import pyarrow as pa

# Keyset batches aim at this many bytes of raw rows: big enough to amortise the per-batch
# query, small enough that memory stays flat whatever the row width.
TARGET_BATCH_BYTES = 8 * 1024 * 1024
MIN_BATCH_ROWS = 100
MAX_BATCH_ROWS = 200_000
FIRST_BATCH_ROWS = 10_000
# COPY's bytes are handed to the encoder in chunks this small (8 wait in the queue): 1 MiB chunks
# left up to ~20 MB of holes in the reader's and main malloc arenas, so a CSV run's peak RSS crept
# up with its rows (job_csv at 3M rows: 188-191 MB with 1 MiB chunks, 181-182 MB with 96 KiB).
CHUNK_BYTES = 96 * 1024
ARROW_BATCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class KeyRange:
    after: Any  # exclusive lower bound (None: from the start)
    first: Any
    last: Any  # inclusive upper bound
    rows: int


def next_batch_rows(rows: int, nbytes: int) -> int:
    """Rows for the next batch, from the bytes per row of the last one (deterministic)."""
    if rows <= 0 or nbytes <= 0:
        return FIRST_BATCH_ROWS
    return max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, TARGET_BATCH_BYTES * rows // nbytes))


class RowSource(Protocol):
    def begin_file(self) -> str: ...
    def next_range(self, after: Any, limit: int) -> KeyRange | None: ...
    def count_range(self, after: Any, upto: Any) -> tuple[int, ...]: ...
    def count_file(self, after: Any, upto: Any) -> tuple[int, ...]: ...
    def read(self, key_range: KeyRange) -> Iterator[Any]: ...
    def end_file(self) -> None: ...
    def close(self) -> None: ...


def _wait_result(pgconn: pq.abc.PGconn, expected: pq.ExecStatus) -> None:
    """Wait for the next result of a query sent with send_query; raise on anything else."""
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
        select.select([pgconn.socket], [], [])
    result = pgconn.get_result()
    if result is None or result.status != expected:
        message = result.get_error_message() if result is not None else pgconn.get_error_message()
        while pgconn.get_result() is not None:  # drain, so the connection can be rolled back
            pass
        raise psycopg.OperationalError(f"COPY failed: {message}")
    if expected == pq.ExecStatus.COMMAND_OK and pgconn.get_result() is not None:
        raise psycopg.OperationalError("COPY returned more than one result")


class PgCsvSource:
    """CSV bytes straight from PostgreSQL's COPY, in chunks of about CHUNK_BYTES."""

    def __init__(
        self,
        conninfo: str,
        query: ExportQuery,
        high_water_mark: Any,
        statement_timeout_seconds: float | None = None,
        counters: tuple[Counter, ...] = (),
        *,
        chunk_bytes: int = CHUNK_BYTES,
        stream_counted: frozenset[tuple[str, str]] = frozenset(),
        materialize: bool = True,
    ) -> None:
        self.query = self.unmaterialized = query
        # Only when this session reads the rows too: a temp table is invisible to another session.
        self.materialize = materialize and query.can_materialize
        self.hwm = high_water_mark
        self.counters = counters
        self.chunk_bytes = chunk_bytes
        # Counted per file here: all but those the encoder counts in the rows it writes.
        self.file_counters = tuple(c for c in counters if (c.column, c.key) not in stream_counted)
        self._file_set = {(c.column, c.key) for c in self.file_counters}
        self.conn = connect(conninfo, autocommit=False, statement_timeout_seconds=statement_timeout_seconds)
        self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ

    def begin_file(self) -> str:
        self.conn.rollback()
        self.query = self.unmaterialized
        row = self.conn.execute("SELECT pg_current_snapshot()::text").fetchone()
        if self.materialize:
            for stmt in self.query.materialize():
                self.conn.execute(stmt, [])
            self.query = replace(self.query, materialized=True)
        return str(row[0]) if row else ""

    def next_range(self, after: Any, limit: int) -> KeyRange | None:
        """The next batch's bounds: an index-only scan (no special values counted here)."""
        stmt, params = self.query.next_range(after, self.hwm, limit)
        row = self.conn.execute(stmt, params).fetchone()
        if not row or not row[0]:
            return None
        return KeyRange(after=after, first=row[1], last=row[2], rows=int(row[0]))

    def _count_statement(
        self, after: Any, upto: Any, found: tuple[Counter, ...]
    ) -> tuple[sql.Composable, list[Any]]:
        """Special values of the rows in (after, upto]: only rows matching one of the counters'
        predicates are counted, so an index on a counted column (the time column's, for
        timestamps' infinities and far years) finds the few candidates without touching the
        rest of the heap."""
        where, params = self.query.where(after, upto)
        candidates = sql.SQL(" OR ").join(c.predicate for c in found)
        stmt = sql.SQL("SELECT {} FROM {} WHERE {} AND ({})").format(
            aggregates(list(found)), self.query.table, where, candidates
        )
        return stmt, params

    def count_file(self, after: Any, upto: Any) -> tuple[int, ...]:
        """Special values of the file just read, rows (after, upto], in its own snapshot (the
        open transaction): the same rows the COPY read, counted once per file. Counting per
        batch, in the bounds query, turned that index-only scan into a heap scan of every row;
        measured on 1M rows (one 1M-row file): +0.31-0.41 s per export for CSV's three timestamp
        counters, 0.003 s counted here (the time column's index); Parquet's five (numeric NaN
        has no index) +0.45-0.70 s per batch, 0.25-0.28 s here, ~0.00 s with NaN counted by the
        encoder. One value per counter of the source; 0 for those the encoder counts."""
        if not self.counters or upto is None:
            return ()
        if not self.file_counters:
            return (0,) * len(self.counters)
        stmt, params = self._count_statement(after, upto, self.file_counters)
        row = self.conn.execute(stmt, params).fetchone()
        values = iter(int(v) for v in row or ())
        return tuple(next(values, 0) if (c.column, c.key) in self._file_set else 0 for c in self.counters)

    def count_range(self, after: Any, upto: Any) -> tuple[int, ...]:
        """Special values of the rows in (after, upto], in a snapshot of their own (a recount of
        rows an earlier attempt wrote)."""
        if not self.counters:
            return ()
        stmt, params = self._count_statement(after, upto, self.counters)
        try:
            row = self.conn.execute(stmt, params).fetchone()
        finally:
            self.conn.commit()
        return tuple(int(v) for v in row) if row else ()

    def read(self, key_range: KeyRange) -> Iterator[bytes]:
        """COPY one range through psycopg's libpq wrapper (`psycopg.pq`) directly.

        libpq hands COPY data over one row at a time; psycopg's Copy iterator costs ~1.3 µs of
        Python per row, this loop about half that, and client CPU is what the compressor and
        the server compete for on a small machine. Values are bound client-side by psycopg,
        exactly as `cursor.copy()` does it.
        """
        stmt, params = self.query.copy_range(key_range.after, key_range.last)
        query = psycopg.ClientCursor(self.conn).mogrify(stmt, params).encode()
        pgconn = self.conn.pgconn
        pgconn.send_query(query)
        _wait_result(pgconn, pq.ExecStatus.COPY_OUT)
        get_copy_data, consume, sock = pgconn.get_copy_data, pgconn.consume_input, pgconn.socket
        chunk_bytes = self.chunk_bytes
        buf = bytearray()
        while True:
            nbytes, data = get_copy_data(1)
            if nbytes > 0:
                buf += data
                if len(buf) >= chunk_bytes:
                    yield bytes(buf)
                    buf.clear()
            elif nbytes == 0:
                select.select([sock], [], [])
                consume()
            elif nbytes == -1:
                break
            else:
                raise psycopg.OperationalError(pgconn.get_error_message())
        _wait_result(pgconn, pq.ExecStatus.COMMAND_OK)
        if buf:
            yield bytes(buf)

    def end_file(self) -> None:
        self.conn.commit()
        self.query = self.unmaterialized  # the temp table went with the commit

    def close(self) -> None:
        self.conn.close()


class ArrowSource:
    """Arrow record batches read by ADBC; bounds use the same psycopg snapshot (exported to ADBC).

    ADBC's low-level API is used because its DB-API module imports pandas (~55 MB of RSS).
    """

    def __init__(
        self,
        conninfo: str,
        query: ExportQuery,
        high_water_mark: Any,
        statement_timeout_seconds: float | None = None,
        counters: tuple[Counter, ...] = (),
        stream_counted: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        import adbc_driver_manager
        import adbc_driver_postgresql
        import pyarrow

        settle_allocators()  # before the first batch: see memory.py
        self._adm, self._pa = adbc_driver_manager, pyarrow
        self.query = self.unmaterialized = query
        self.hwm = high_water_mark
        # Bounds and special-value counts come from psycopg, in the snapshot ADBC reads. An
        # incremental delivery's change relation is evaluated once per file in each session, into
        # each one's temp table (a session cannot see another's): the same rows, the same snapshot.
        self.bounds = PgCsvSource(
            conninfo,
            query,
            high_water_mark,
            statement_timeout_seconds,
            counters,
            stream_counted=stream_counted,
        )
        try:
            self._db = adbc_driver_postgresql.connect(conninfo)
            self._conn = adbc_driver_manager.AdbcConnection(self._db)
        except adbc_driver_manager.Error as exc:
            # libpq's message may quote the URL's password: the same error psycopg's path raises
            # for a failed connect, without it.
            raise psycopg.OperationalError(scrub(str(exc), conninfo)) from None
        for name, value in session_settings(statement_timeout_seconds).items():
            self._execute(f"SET {name} = '{value}'")
        self._in_tx = False

    def _execute(self, statement: str) -> None:
        stmt = self._adm.AdbcStatement(self._conn)
        try:
            stmt.set_sql_query(statement)
            stmt.execute_update()
        finally:
            stmt.close()

    def _batches(self, statement: str) -> Iterator[pa.RecordBatch]:
        stmt = self._adm.AdbcStatement(self._conn)
        try:
            # Smaller batches than ADBC's 16 MB default keep the queue's memory small.
            stmt.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(ARROW_BATCH_BYTES)})
            stmt.set_sql_query(statement)
            stream, _ = stmt.execute_query()
            yield from self._pa.RecordBatchReader.from_stream(stream)
        finally:
            stmt.close()

    def _render(self, stmt: sql.Composable, params: list[Any]) -> str:
        # ADBC runs parameterised queries without COPY (2x slower). psycopg binds the values
        # client-side here, exactly as it does for its own COPY statements.
        return psycopg.ClientCursor(self.bounds.conn).mogrify(stmt, params)

    def begin_file(self) -> str:
        snapshot = self.bounds.begin_file()
        row = self.bounds.conn.execute("SELECT pg_export_snapshot()").fetchone()
        self._end_adbc_tx()
        self.query = self.unmaterialized
        materialize = self.bounds.materialize
        # READ ONLY refuses CREATE, even of a temp table; nothing else is written either way.
        self._execute("BEGIN ISOLATION LEVEL REPEATABLE READ" + ("" if materialize else " READ ONLY"))
        self._in_tx = True
        self._execute(self._render(sql.SQL("SET TRANSACTION SNAPSHOT %s"), [row[0] if row else ""]))
        if materialize:
            for stmt in self.query.materialize():
                self._execute(self._render(stmt, []))
            self.query = replace(self.query, materialized=True)
        return snapshot

    def next_range(self, after: Any, limit: int) -> KeyRange | None:
        return self.bounds.next_range(after, limit)

    def count_range(self, after: Any, upto: Any) -> tuple[int, ...]:
        return self.bounds.count_range(after, upto)

    def count_file(self, after: Any, upto: Any) -> tuple[int, ...]:
        return self.bounds.count_file(after, upto)  # the snapshot ADBC read the file in

    def read(self, key_range: KeyRange) -> Iterator[pa.RecordBatch]:
        stmt, params = self.query.select_range(key_range.after, key_range.last)
        yield from self._batches(self._render(stmt, params))

    def empty_batch(self) -> pa.RecordBatch:
        """A zero-row batch with the export's real column types (a file with no rows)."""
        stmt, params = self.query.select_range(None, None)
        query = self._render(sql.SQL("{} LIMIT 0").format(stmt), params)
        stmt_handle = self._adm.AdbcStatement(self._conn)
        try:
            stmt_handle.set_sql_query(query)
            stream, _ = stmt_handle.execute_query()
            schema = self._pa.RecordBatchReader.from_stream(stream).schema
        finally:
            stmt_handle.close()
        return self._pa.RecordBatch.from_pylist([], schema=schema)

    def _end_adbc_tx(self) -> None:
        if self._in_tx:
            self._execute("COMMIT")
            self._in_tx = False

    def end_file(self) -> None:
        self._end_adbc_tx()
        self.query = self.unmaterialized  # the temp table went with the commit
        self.bounds.end_file()

    def close(self) -> None:
        try:
            self._conn.close()
            self._db.close()
        finally:
            self.bounds.close()
