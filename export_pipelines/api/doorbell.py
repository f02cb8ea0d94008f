"""The API's doorbell: tells the request submitter about new pending rows after they commit.

An insert into export_requests normally notifies the submitter from its own transaction (the
table's trigger). PostgreSQL serialises the commits of all transactions that notified, across the
cluster, each holding that lock through its WAL flush: at a few hundred creates a second the API's
inserts queued behind each other's fsync. So the API's connections set
`export_pipelines.notify_after_commit` (api/db.py), the trigger leaves their inserts unannounced, and
the routes that make a pending row (create, a feed's run and full refresh) ring the doorbell, which
sends a notice from a thread of its own after they commit: a notice-only transaction writes no WAL
to wait for, and the notices of a burst fold into one.

If the process dies between a commit and its notice, the row is found by the submitter's sweep and
the request sensor, a few seconds later, as before the submitter existed."""

from __future__ import annotations

import logging
import threading

import psycopg

from export_pipelines.api.db import ConnectionPool
from export_pipelines.api.errors import ApiError
from export_pipelines.core.storage.migrations.request_table import PENDING_CHANNEL

log = logging.getLogger("export_pipelines.api.doorbell")

# Rings within this long of each other are one notice: the submitter claims every pending row it
# finds on a notice, so one is enough for a burst.
FOLD_SECONDS = 0.005


class PendingDoorbell:
    def __init__(self, pool: ConnectionPool, fold_seconds: float = FOLD_SECONDS) -> None:
        self.pool = pool
        self.fold_seconds = fold_seconds
        self._rung = threading.Event()
        self._closed = threading.Event()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None

    def ring(self) -> None:
        """A pending row was committed: the submitter hears of it within a few milliseconds."""
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="pending-doorbell", daemon=True)
                    self._thread.start()
        self._rung.set()

    def close(self) -> None:
        self._closed.set()
        self._rung.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self._rung.wait()
            if self._closed.is_set():
                return
            self._rung.clear()
            try:
                with self.pool.connection() as conn, conn.transaction():
                    # Nothing here is worth an fsync: a lost notice is found by the sweep.
                    conn.execute("SET LOCAL synchronous_commit = off")
                    conn.execute("SELECT pg_notify(%s, '')", [PENDING_CHANNEL])
            except (psycopg.Error, ApiError) as exc:
                log.warning("could not notify the submitter (its sweep finds the row): %s", exc)
            self._closed.wait(self.fold_seconds)
