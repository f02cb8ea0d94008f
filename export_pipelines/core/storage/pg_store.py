"""The base of every table's store: one connection, its own (opened on first use, reopened if the
server dropped it, closed with the store) or one it is lent (`Store.on(conn)`: the API's pool,
another store's connection), where it runs in the lender's transaction if one is open."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Self

import psycopg
from psycopg.rows import RowFactory, tuple_row

from export_pipelines.core.storage.migrations import migrate_once
from export_pipelines.core.storage.pg_connect import check_database_url, open_connection

# Store statements are short; a stuck one must not hold a run or a sensor tick for long.
STORE_STATEMENT_TIMEOUT = "-c statement_timeout=30s"


class PgStore:
    """Each statement its own transaction on an autocommit connection, unless the caller opened one
    (`with store.conn.transaction():`, or the lender's). Rows come as `row_factory` makes them,
    whatever the connection's own row factory is."""

    row_factory: ClassVar[RowFactory[Any]] = tuple_row

    def __init__(self, conninfo: str) -> None:
        # Checked at once: the migration and subclasses' own connects must not echo a bad URL.
        self.conninfo = check_database_url(conninfo)
        self._conn: psycopg.Connection[Any] | None = None
        self._lent = False
        self._lock = threading.Lock()

    @classmethod
    def on(cls, conn: psycopg.Connection[Any]) -> Self:
        """This store on a connection it is lent: never reopened, never closed by the store."""
        store = cls.__new__(cls)
        store.conninfo = ""
        store._conn = conn
        store._lent = True
        store._lock = threading.Lock()
        return store

    def open(self) -> psycopg.Connection[Any]:
        """The store's own connection (subclasses add session settings)."""
        return open_connection(self.conninfo, autocommit=True, options=STORE_STATEMENT_TIMEOUT)

    @property
    def conn(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._lent:
                assert self._conn is not None
                return self._conn
            if self._conn is None or self._conn.closed:
                self._conn = self.open()
            return self._conn

    def cursor(self) -> psycopg.Cursor[Any]:
        """A cursor on the store's connection that makes rows with the store's row factory."""
        return self.conn.cursor(row_factory=type(self).row_factory)  # the class's, unbound

    def execute(
        self, query: Any, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> psycopg.Cursor[Any]:
        """Run one statement; a connection of its own the server dropped (restart, idle timeout) is
        reopened once, as the connection per call this replaces would have been. A lent connection
        is the lender's to reopen."""
        try:
            return self.cursor().execute(query, params)
        except psycopg.OperationalError:
            if self._lent or self._conn is None or not self._conn.closed:
                raise
            return self.cursor().execute(query, params)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction (a savepoint inside one the lender opened), and a cursor of the store's
        rows on it: its statements commit together or not at all."""
        conn = self.conn
        with conn.transaction():
            yield self.cursor()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and not self._lent:
                self._conn.close()
                self._conn = None

    def migrate_once(self) -> Self:
        """This store, with the project's tables created or upgraded once per process."""
        migrate_once(self.conninfo)
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
