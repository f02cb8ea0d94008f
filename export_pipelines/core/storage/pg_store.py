"""The connection a store (requests, checkpoints) keeps for its lifetime: opened on first use,
reopened if the server dropped it, closed by whoever opened the store (the Dagster resource at the
end of a run, or a `with` block)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Self

import psycopg

from export_pipelines.core.storage.migrations import migrate_once
from export_pipelines.core.storage.pg_connect import (  # noqa: F401 - re-exported: the stores' connect
    DATABASE_URL_SETTING,
    check_database_url,
    open_connection,
    scrub,
)

# Store statements are short; a stuck one must not hold a run or a sensor tick for long.
STORE_STATEMENT_TIMEOUT = "-c statement_timeout=30s"


class PgStore:
    """Base of the stores: one autocommit connection, each statement its own transaction."""

    def __init__(self, conninfo: str) -> None:
        # Checked at once: the migration and subclasses' own connects must not echo a bad URL.
        self.conninfo = check_database_url(conninfo)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def _open(self) -> psycopg.Connection[Any]:
        return open_connection(self.conninfo, autocommit=True, options=STORE_STATEMENT_TIMEOUT)

    @property
    def conn(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = self._open()
            return self._conn

    def execute(self, query: Any, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        """Run one statement; a connection the server dropped (restart, idle timeout) is reopened
        once, as the connection per call this replaces would have been."""
        try:
            return self.conn.execute(query, params)
        except psycopg.OperationalError:
            if self._conn is None or not self._conn.closed:
                raise
            return self.conn.execute(query, params)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
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
