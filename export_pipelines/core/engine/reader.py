"""The reader thread: streams an export's rows from PostgreSQL onto a bounded queue, with the
events that tell the encoder loop where files start and keyset ranges end."""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Any

from export_pipelines.core.engine.encoders.base import Encoder
from export_pipelines.core.engine.encoders.special_values import Counter
from export_pipelines.core.engine.plan import ExportPlan
from export_pipelines.core.engine.query import ExportQuery
from export_pipelines.core.engine.sources import (
    CHUNK_BYTES,
    FIRST_BATCH_ROWS,
    ArrowSource,
    KeyRange,
    PgCsvSource,
    RowSource,
    next_batch_rows,
)
from export_pipelines.core.requests.catalog import Catalog

QUEUE_ITEMS = 8  # reader → encoder: at most this many ~1 MiB CSV chunks waiting
ARROW_QUEUE_ITEMS = 2  # or this many ~4 MiB Arrow batches


@dataclass(frozen=True)
class ReaderStart:
    """Where the reader begins: after the last file or part an earlier attempt checkpointed."""

    files_done: int = 0
    after: Any = None
    batch_rows: int = FIRST_BATCH_ROWS
    continue_rows: int | None = None  # set: the first file is an open upload, with this many rows


# Events from the reader thread to the encoder loop; anything else on the queue is row data.
class Control:
    pass


@dataclass(frozen=True)
class FileStart(Control):
    snapshot: str
    after: Any  # where the file's rows start (a restarted file starts here again)
    batch_rows: int
    continued: bool = False


@dataclass(frozen=True)
class RangeDone(Control):
    key_range: KeyRange
    next_batch_rows: int


@dataclass(frozen=True)
class FileEnd(Control):
    counts: tuple[int, ...] = ()  # the file's special values (this attempt's rows), per counter


class Done(Control):
    pass


@dataclass(frozen=True)
class Failed(Control):
    error: BaseException


class Reader(threading.Thread):
    """Produces the export's events; splits files at range ends by max_rows_per_file."""

    def __init__(
        self, source: RowSource, plan: ExportPlan, out: queue.Queue[Any], start: ReaderStart
    ) -> None:
        super().__init__(name="export-reader", daemon=True)
        self.source, self.plan, self.out, self.start_at = source, plan, out, start
        self.stop = threading.Event()

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise _Stopped

    def run(self) -> None:
        try:
            self._produce()
            self._put(Done())
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            with contextlib.suppress(_Stopped):
                self._put(Failed(exc))

    def _empty_file(self, snapshot: str) -> None:
        """A file with no rows: the header, or for Arrow a zero-row batch carrying the types.
        Read here, on the reader's own connection: connections are not shared across threads."""
        self._put(FileStart(snapshot, None, self.start_at.batch_rows))
        if isinstance(self.source, ArrowSource):
            self._put(self.source.empty_batch())
        self._put(FileEnd())

    def _produce(self) -> None:
        max_rows = self.plan.request.max_rows_per_file
        start = self.start_at
        after, batch_rows, files = start.after, start.batch_rows, start.files_done
        continuing = start.continue_rows is not None
        if self.plan.high_water_mark is None and self.plan.request.feed is None:
            # No matching rows at plan time: one file with just the header / schema.
            snapshot = self.source.begin_file()
            if continuing:
                self._put(FileStart(snapshot, after, batch_rows, continued=True))
                self._put(FileEnd())
            elif files == 0:
                self._empty_file(snapshot)
            self.source.end_file()
            return
        while True:
            snapshot = self.source.begin_file()
            rows_in_file = 0
            started = exhausted = False
            file_after = after  # this attempt's rows of the file: (file_after, after]
            if continuing:
                self._put(FileStart(snapshot, after, batch_rows, continued=True))
                rows_in_file, started, files, continuing = start.continue_rows or 0, True, files + 1, False
            while max_rows is None or rows_in_file < max_rows:
                limit = batch_rows if max_rows is None else min(batch_rows, max_rows - rows_in_file)
                key_range = self.source.next_range(after, limit)
                if key_range is None:
                    exhausted = True
                    break
                if not started:
                    self._put(FileStart(snapshot, after, batch_rows))
                    started, files = True, files + 1
                nbytes = 0
                for chunk in self.source.read(key_range):
                    nbytes += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
                    self._put(chunk)
                batch_rows = next_batch_rows(key_range.rows, nbytes)
                self._put(RangeDone(key_range, batch_rows))
                rows_in_file += key_range.rows
                after = key_range.last
            if not started and files == 0:
                # Rows vanished between plan and read (deleted): still one, empty, file.
                self._empty_file(snapshot)
            elif started:
                self._put(FileEnd(self.source.count_file(file_after, after)))
            self.source.end_file()
            if exhausted:
                return


class _Stopped(Exception):
    pass


def make_source(
    conninfo: str,
    plan: ExportPlan,
    encoder_cls: type[Encoder],
    catalog: Catalog,
    statement_timeout_seconds: float | None = None,
    counters: tuple[Counter, ...] = (),
) -> RowSource:
    """The row source the format reads (CSV bytes from COPY, or Arrow batches); with counters,
    it counts each file's special values."""
    query = ExportQuery(catalog.resource(plan.request.resource), plan.request, plan.types)
    # The format may have PostgreSQL render some columns (bytea as base64, JSON rows, ...).
    query = encoder_cls.render_query(query)
    streamed = encoder_cls.stream_counted(plan.columns)
    if encoder_cls.input_kind == "pg_csv":
        chunk = encoder_cls.input_chunk_bytes or CHUNK_BYTES
        return PgCsvSource(
            conninfo,
            query,
            plan.high_water_mark,
            statement_timeout_seconds,
            counters,
            chunk_bytes=chunk,
            stream_counted=streamed,
        )
    return ArrowSource(conninfo, query, plan.high_water_mark, statement_timeout_seconds, counters, streamed)


def event_queue(encoder_cls: type[Encoder]) -> queue.Queue[Any]:
    """The bounded reader → encoder queue: its size bounds the memory rows wait in."""
    return queue.Queue(maxsize=QUEUE_ITEMS if encoder_cls.input_kind == "pg_csv" else ARROW_QUEUE_ITEMS)
