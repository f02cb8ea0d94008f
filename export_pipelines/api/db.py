"""A small pool of autocommit PostgreSQL connections for the API's worker threads.

Each request borrows one connection and lends it to core's stores (`Store.on(conn)`) for a few
short statements; a connection that broke is dropped, not returned. (psycopg_pool would do; this
keeps the service's dependencies to FastAPI.)"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from export_pipelines.api.errors import ApiError

# The API's statements are all short: a stuck one answers 503 rather than holding a thread.
API_STATEMENT_TIMEOUT = "-c statement_timeout=5s -c lock_timeout=5s"


class ConnectionPool:
    def __init__(self, conninfo: str, max_size: int = 20, wait_seconds: float = 5.0) -> None:
        self.conninfo = conninfo
        self.max_size = max_size
        self.wait_seconds = wait_seconds
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max_size)
        self._closed = False

    def _open(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.conninfo,
            autocommit=True,
            options=API_STATEMENT_TIMEOUT,
            connect_timeout=5,
        )
        conn.execute("SET TimeZone = 'UTC'")
        return conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise ApiError(
                503,
                "database_unavailable",
                "the service is busy; retry in a moment",
                headers={"Retry-After": "1"},
            )
        conn: psycopg.Connection[Any] | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = None
            if conn is None or conn.closed:
                try:
                    conn = self._open()
                except psycopg.OperationalError as exc:
                    raise ApiError(
                        503,
                        "database_unavailable",
                        "the database is not reachable",
                        headers={"Retry-After": "5"},
                    ) from exc
            yield conn
        except psycopg.OperationalError as exc:
            if conn is not None:
                conn.close()
            raise ApiError(
                503, "database_unavailable", "the database is not reachable", headers={"Retry-After": "5"}
            ) from exc
        finally:
            if conn is not None and not conn.closed:
                if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and not self._closed:
                    self._idle.put(conn)
                else:
                    conn.close()
            self._slots.release()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
