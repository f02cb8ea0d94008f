"""The API's PostgreSQL connections: a psycopg_pool pool of autocommit connections with short
timeouts, each checked (one round trip) before it is handed out (a connection whose backend died is
replaced, not given to a request), and a bounded number of them, so a slow database cannot take every worker
thread: a request that waits longer than `wait_seconds` for one answers 503.

Each request borrows one connection and lends it to core's stores (`Store.on(conn)`) for a few
short statements."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool

from export_pipelines.api.errors import ApiError
from export_pipelines.core.storage.migrations.request_table import NOTIFY_AFTER_COMMIT_SETTING

# The API's statements are all short: a stuck one answers 503 rather than holding a thread.
API_STATEMENT_TIMEOUT = (
    "-c statement_timeout=5s -c lock_timeout=5s -c idle_in_transaction_session_timeout=10s"
)
CONNECT_TIMEOUT_SECONDS = 5
APPLICATION_NAME = "export-api"


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET TimeZone = 'UTC'")
    # Pending rows the API inserts are announced by its doorbell after commit (api/doorbell.py),
    # not by the insert trigger from inside the insert's transaction.
    conn.execute(f"SET {NOTIFY_AFTER_COMMIT_SETTING} = 'on'")


def _quiet(conn: psycopg.Connection[Any]) -> bool:
    """True when an idle connection's socket has nothing to read, without a round trip.

    A server that ends a session (pg_terminate_backend, a restart, an idle timeout) writes its FATAL
    message and closes the socket, so the socket of a dead connection is readable; a quiet one is
    handed out as it is. Anything else is checked with a round trip: a check per request cost two
    round trips of a create's eight (and their hops through the GIL)."""
    if conn.closed or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
        return False
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable


def _unavailable(message: str = "the database is not reachable") -> ApiError:
    return ApiError(503, "database_unavailable", message, headers={"Retry-After": "5"})


class ConnectionPool:
    def __init__(self, conninfo: str, max_size: int = 16, wait_seconds: float = 5.0) -> None:
        self.conninfo = conninfo
        self.max_size = max_size
        self.wait_seconds = wait_seconds
        self._pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=min(2, max_size),
            max_size=max_size,
            kwargs={
                "autocommit": True,
                "options": API_STATEMENT_TIMEOUT,
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "application_name": APPLICATION_NAME,  # how operators find the API's sessions
            },
            configure=_configure,
            # Each checkout is checked in `_checked_out` (one round trip): a connection whose backend
            # was killed (a restart, a failover, pg_terminate_backend) is dropped and replaced
            # instead of failing a request.
            timeout=wait_seconds,
            reconnect_timeout=60,
            name="export-api",
            open=False,
        )
        # Open without waiting: the API starts (and /healthz answers) while the database is down.
        self._pool.open(wait=False)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._checked_out()
        try:
            yield conn
        except psycopg.OperationalError as exc:
            raise _unavailable() from exc
        finally:
            # The pool discards a connection that broke while it was lent.
            self._pool.putconn(conn)

    def _checked_out(self) -> psycopg.Connection[Any]:
        """A live connection: one whose socket is quiet, or that answered a round trip just now.

        psycopg_pool's own `check` backs off after each failed check (1 s, 2 s, …), so after a
        database restart killed every pooled connection a request would wait out its timeout
        walking through the dead ones; here each dead one is dropped at once and the next tried (the
        pool opens new ones as needed)."""
        deadline = time.monotonic() + self.wait_seconds
        for _ in range(self.max_size + 1):
            try:
                conn = self._pool.getconn(timeout=max(0.1, deadline - time.monotonic()))
            except psycopg_pool.PoolTimeout as exc:
                raise _unavailable("the database is busy or not reachable; retry in a moment") from exc
            except psycopg.OperationalError as exc:
                raise _unavailable() from exc
            try:
                if not _quiet(conn):
                    psycopg_pool.ConnectionPool.check_connection(conn)
            except psycopg.Error:
                conn.close()
                self._pool.putconn(conn)  # closed: the pool drops it
                continue
            return conn
        raise _unavailable()

    def stats(self) -> dict[str, int]:
        return self._pool.get_stats()

    def close(self) -> None:
        self._pool.close(timeout=5)
