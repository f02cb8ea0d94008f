"""The streaming core: plan an export, then read → encode → upload with memory that stays flat.

Three stages overlap: a reader thread streams keyset batches from PostgreSQL into a bounded
queue; the calling thread encodes/compresses and cuts S3 parts; a small pool uploads at most
`max_parts_in_flight` parts at once. zlib, pyarrow and sockets release the GIL, so on two cores
the database read, the compressor and the upload run side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from export_pipelines.core.catalog import Catalog
from export_pipelines.core.encoders import Encoder, encoder_class
from export_pipelines.core.keyset import ArrowSource, KeyRange, PgCsvSource, RowSource, next_batch_rows
from export_pipelines.core.layout import ExportLocation
from export_pipelines.core.query import ColumnInfo, ExportQuery, connect, introspect_columns
from export_pipelines.core.request import ExportRequest
from export_pipelines.core.s3 import MultipartSink, UploadedPart, part_size_for

DEFAULT_PART_SIZE = 8 * 1024 * 1024
QUEUE_ITEMS = 8  # reader → encoder: at most this many ~1 MiB CSV chunks waiting
ARROW_QUEUE_ITEMS = 2  # or this many ~4 MiB Arrow batches


@dataclass(frozen=True)
class ExportPlan:
    """What count_rows decided: the validated request, column types, the cut, the place."""

    request: ExportRequest
    types: dict[str, ColumnInfo]  # every catalog column of the resource
    rows_total: int
    high_water_mark: Any  # max key at plan time: rows with a larger key are out
    location: ExportLocation
    key_column: str
    planned_at: float

    @property
    def columns(self) -> list[ColumnInfo]:
        """The exported columns, in output order."""
        return [self.types[c] for c in self.request.columns]


@dataclass
class FileResult:
    key: str
    rows: int = 0
    bytes: int = 0
    sha256: str = ""
    first_key: Any = None
    last_key: Any = None
    parts: int = 0
    snapshot: str = ""


@dataclass
class ExportProgress:
    rows_exported: int
    rows_total: int
    bytes_written: int
    parts_uploaded: int
    files_completed: int
    file_key: str


@dataclass
class ExportOutcome:
    files: list[FileResult]
    output_types: dict[str, str]
    seconds: float
    rows: int = field(init=False)
    bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = sum(f.rows for f in self.files)
        self.bytes = sum(f.bytes for f in self.files)


def plan_export(conninfo: str, catalog: Catalog, request: ExportRequest, prefix: str) -> ExportPlan:
    """Count the rows (progress denominator) and fix the high-water mark, in one snapshot."""
    spec = catalog.resource(request.resource)
    with connect(conninfo) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        types = introspect_columns(conn, spec)
        query = ExportQuery(spec, request, types)
        stmt, params = query.count_and_high_water_mark()
        row = conn.execute(stmt, params).fetchone()
    rows_total, hwm = (int(row[0]), row[1]) if row else (0, None)
    return ExportPlan(
        request=request,
        types=types,
        rows_total=rows_total,
        high_water_mark=hwm,
        location=ExportLocation(prefix, request.tenant_id, request.resource, request.export_id),
        key_column=spec.key,
        planned_at=time.time(),
    )


# Events from the reader thread to the encoder loop; anything else on the queue is row data.
class _Control:
    pass


@dataclass(frozen=True)
class _FileStart(_Control):
    snapshot: str


@dataclass(frozen=True)
class _RangeDone(_Control):
    key_range: KeyRange


class _FileEnd(_Control):
    pass


class _Done(_Control):
    pass


@dataclass(frozen=True)
class _Failed(_Control):
    error: BaseException


class _Reader(threading.Thread):
    """Produces the export's events; splits files at range ends by max_rows_per_file."""

    def __init__(self, source: RowSource, plan: ExportPlan, out: queue.Queue[Any]) -> None:
        super().__init__(name="export-reader", daemon=True)
        self.source, self.plan, self.out = source, plan, out
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
            self._put(_Done())
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            with contextlib.suppress(_Stopped):
                self._put(_Failed(exc))

    def _empty_file(self, snapshot: str) -> None:
        """A file with no rows: the header, or for Arrow a zero-row batch carrying the types.
        Read here, on the reader's own connection: connections are not shared across threads."""
        self._put(_FileStart(snapshot))
        if isinstance(self.source, ArrowSource):
            self._put(self.source.empty_batch())
        self._put(_FileEnd())

    def _produce(self) -> None:
        max_rows = self.plan.request.max_rows_per_file
        after: Any = None
        batch_rows = next_batch_rows(0, 0)
        files = 0
        if self.plan.high_water_mark is None:
            # No matching rows at plan time: one file with just the header / schema.
            self._empty_file(self.source.begin_file())
            self.source.end_file()
            return
        while True:
            snapshot = self.source.begin_file()
            rows_in_file = 0
            exhausted = False
            started = False
            while True:
                limit = batch_rows if max_rows is None else min(batch_rows, max_rows - rows_in_file)
                key_range = self.source.next_range(after, limit)
                if key_range is None:
                    exhausted = True
                    break
                if not started:
                    self._put(_FileStart(snapshot))
                    started, files = True, files + 1
                nbytes = 0
                for chunk in self.source.read(key_range):
                    nbytes += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
                    self._put(chunk)
                self._put(_RangeDone(key_range))
                batch_rows = next_batch_rows(key_range.rows, nbytes)
                rows_in_file += key_range.rows
                after = key_range.last
                if max_rows is not None and rows_in_file >= max_rows:
                    break
            if not started and files == 0:
                # Rows vanished between plan and read (deleted): still one, empty, file.
                self._empty_file(snapshot)
            elif started:
                self._put(_FileEnd())
            self.source.end_file()
            if exhausted:
                return


class _Stopped(Exception):
    pass


class _PartUploader:
    """Uploads parts of one file with at most `limit` in flight; keeps them in order."""

    def __init__(self, pool: ThreadPoolExecutor, sink: MultipartSink, limit: int) -> None:
        self.pool, self.sink, self.limit = pool, sink, limit
        self.pending: list[tuple[Future[UploadedPart], int, Any]] = []
        self.done: list[UploadedPart] = []

    def submit(
        self, number: int, data: bytes, rows: int, last_key: Any
    ) -> list[tuple[UploadedPart, int, Any]]:
        self.pending.append((self.pool.submit(self.sink.upload_part, number, data), rows, last_key))
        finished = []
        while len(self.pending) >= self.limit:
            finished.append(self._wait_oldest())
        finished.extend(self._collect_ready())
        return finished

    def _wait_oldest(self) -> tuple[UploadedPart, int, Any]:
        fut, rows, last_key = self.pending.pop(0)
        part = fut.result()
        self.done.append(part)
        return part, rows, last_key

    def _collect_ready(self) -> list[tuple[UploadedPart, int, Any]]:
        out = []
        while self.pending and self.pending[0][0].done():
            out.append(self._wait_oldest())
        return out

    def drain(self) -> list[tuple[UploadedPart, int, Any]]:
        out = []
        while self.pending:
            out.append(self._wait_oldest())
        return out

    def cancel(self) -> None:
        for fut, _, _ in self.pending:
            fut.cancel()
        for fut, _, _ in self.pending:
            with contextlib.suppress(BaseException):
                fut.result()
        self.pending.clear()


def make_source(conninfo: str, plan: ExportPlan, encoder_cls: type[Encoder], catalog: Catalog) -> RowSource:
    query = ExportQuery(catalog.resource(plan.request.resource), plan.request, plan.types)
    # The format may have PostgreSQL render some columns (bytea as base64, JSON rows, ...).
    query = encoder_cls.render_query(query)
    if encoder_cls.input_kind == "pg_csv":
        return PgCsvSource(conninfo, query, plan.high_water_mark)
    return ArrowSource(conninfo, query, plan.high_water_mark)


def run_export(
    plan: ExportPlan,
    *,
    conninfo: str,
    catalog: Catalog,
    s3_client: Any,
    bucket: str,
    part_size: int = DEFAULT_PART_SIZE,
    max_parts_in_flight: int = 3,
    on_progress: Callable[[ExportProgress], None] | None = None,
) -> ExportOutcome:
    """Stream the planned export into S3 files. On error, the open upload is aborted."""
    started = time.monotonic()
    encoder_cls = encoder_class(plan.request.format)
    source = make_source(conninfo, plan, encoder_cls, catalog)
    events: queue.Queue[Any] = queue.Queue(
        maxsize=QUEUE_ITEMS if encoder_cls.input_kind == "pg_csv" else ARROW_QUEUE_ITEMS
    )
    reader = _Reader(source, plan, events)
    files: list[FileResult] = []
    totals = {"rows": 0, "bytes": 0, "parts": 0}
    output_types: dict[str, str] = {}
    sink: MultipartSink | None = None
    uploader: _PartUploader | None = None
    pool = ThreadPoolExecutor(max_workers=max_parts_in_flight, thread_name_prefix="export-upload")

    def report(finished: list[tuple[UploadedPart, int, Any]], current: FileResult) -> None:
        for part, rows, _ in finished:  # one progress event per uploaded part
            totals["rows"] += rows
            totals["bytes"] += part.size
            totals["parts"] += 1
            if on_progress:
                on_progress(
                    ExportProgress(
                        rows_exported=totals["rows"],
                        rows_total=plan.rows_total,
                        bytes_written=totals["bytes"],
                        parts_uploaded=totals["parts"],
                        files_completed=len(files),
                        file_key=current.key,
                    )
                )

    reader.start()
    try:
        encoder: Encoder | None = None
        current = FileResult(key="")
        buf = bytearray()
        part_rows = 0
        part_last: Any = None
        digest = hashlib.sha256()

        def ship() -> None:
            nonlocal buf, part_rows
            assert uploader is not None
            current.parts += 1
            data = bytes(buf)
            digest.update(data)
            current.bytes += len(data)
            report(uploader.submit(current.parts, data, part_rows, part_last), current)
            buf = bytearray()
            part_rows = 0

        while True:
            event = events.get()
            if not isinstance(event, _Control):
                assert encoder is not None
                buf += encoder.encode(event)
                if not encoder.resumable and len(buf) >= part_size_for(current.parts + 1, part_size):
                    ship()
            elif isinstance(event, _RangeDone):
                kr = event.key_range
                current.rows += kr.rows
                part_rows += kr.rows
                part_last = kr.last
                if current.first_key is None:
                    current.first_key = kr.first
                current.last_key = kr.last
                assert encoder is not None
                if encoder.resumable and len(buf) >= part_size_for(current.parts + 1, part_size):
                    buf += encoder.cut()
                    ship()
            elif isinstance(event, _FileStart):
                encoder = encoder_cls(plan.columns, plan.request.compression)
                number = len(files) + 1
                current = FileResult(
                    key=plan.location.file_key(number, encoder.extension), snapshot=event.snapshot
                )
                digest = hashlib.sha256()
                sink = MultipartSink(
                    s3_client,
                    bucket,
                    current.key,
                    content_type=encoder.content_type,
                    metadata=_object_metadata(plan, number),
                    content_disposition=attachment(download_name(plan, number, encoder.extension)),
                )
                sink.start()
                uploader = _PartUploader(pool, sink, max_parts_in_flight)
                buf = bytearray(encoder.begin())
                part_rows, part_last = 0, None
            elif isinstance(event, _FileEnd):
                assert encoder is not None and sink is not None and uploader is not None
                buf += encoder.finish()
                ship()
                report(uploader.drain(), current)
                sink.complete(uploader.done)
                current.sha256 = digest.hexdigest()
                output_types = encoder.output_types()
                files.append(current)
                sink = uploader = None
            elif isinstance(event, _Failed):
                raise event.error
            else:  # _Done
                break
    except BaseException:
        if uploader is not None:
            uploader.cancel()
        if sink is not None:
            sink.abort()
        raise
    finally:
        reader.stop.set()
        reader.join(timeout=30)
        pool.shutdown(wait=True, cancel_futures=True)
        source.close()
    return ExportOutcome(files=files, output_types=output_types, seconds=time.monotonic() - started)


def attachment(filename: str) -> str:
    return f'attachment; filename="{filename}"'


def download_name(plan: ExportPlan, number: int, extension: str) -> str:
    """A friendly file name for the browser: resource-tenant-export[-n].ext, ASCII only."""
    req = plan.request
    safe = "".join(
        ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{req.resource}-{req.tenant_id}-{req.export_id}"
    )
    return f"{safe}-{number:05d}.{extension}"


def _object_metadata(plan: ExportPlan, number: int) -> dict[str, str]:
    req = plan.request
    # S3 user metadata must be ASCII: percent-encode the tenant id.
    return {
        "tenant-id": quote(req.tenant_id, safe=""),
        "resource": req.resource,
        "export-id": req.export_id,
        "format": req.format,
        "file-number": str(number),
    }
