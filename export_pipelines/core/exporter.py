"""The streaming core: plan an export, then read → encode → upload with memory that stays flat.

Three stages overlap: a reader thread streams keyset batches from PostgreSQL into a bounded
queue; the calling thread encodes/compresses and cuts S3 parts; a small pool uploads at most
`max_parts_in_flight` parts at once. zlib, pyarrow and sockets release the GIL, so on two cores
the database read, the compressor and the upload run side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from export_pipelines.core.catalog import Catalog
from export_pipelines.core.checkpoints import CheckpointStore, Cut, FileCheckpoint, PartCheckpoint
from export_pipelines.core.encoders import Encoder, encoder_class
from export_pipelines.core.encoders.pdf import check_pdf_rows
from export_pipelines.core.keyset import (
    FIRST_BATCH_ROWS,
    ArrowSource,
    KeyRange,
    PgCsvSource,
    RowSource,
    next_batch_rows,
)
from export_pipelines.core.layout import ExportLocation
from export_pipelines.core.query import ColumnInfo, ExportQuery, connect, introspect_columns
from export_pipelines.core.request import ExportRequest
from export_pipelines.core.s3 import MultipartSink, UploadedPart, abort_uploads, object_sha256, part_size_for

DEFAULT_PART_SIZE = 8 * 1024 * 1024
QUEUE_ITEMS = 8  # reader → encoder: at most this many ~1 MiB CSV chunks waiting
ARROW_QUEUE_ITEMS = 2  # or this many ~4 MiB Arrow batches
# Bump when an encoder's bytes change: old checkpoints are then not reused
# (2: JSON bigint, numeric and floats as strings).
CHECKPOINT_VERSION = 2


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
    fingerprint: str = ""  # what shapes the bytes: a checkpoint is reused only for the same one
    resumed: bool = False  # the cut (and maybe files) came from an earlier attempt's checkpoint

    @property
    def columns(self) -> list[ColumnInfo]:
        """The exported columns, in output order."""
        return [self.types[c] for c in self.request.columns]

    @property
    def key_type(self) -> str:
        return self.types[self.key_column].pg_type


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
    resumed_at_part: int | None = None  # continued by a later attempt from this part number


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


def request_fingerprint(request: ExportRequest, key_column: str, types: dict[str, ColumnInfo]) -> str:
    """A digest of everything that decides an export's bytes (not its id or link expiry)."""
    fields = {k: v for k, v in asdict(request).items() if k not in ("export_id", "link_expiry_hours")}
    shape = {
        "version": CHECKPOINT_VERSION,
        "request": fields,
        "key": key_column,
        "types": [types[c].pg_type for c in request.columns],
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()


def plan_export(
    conninfo: str,
    catalog: Catalog,
    request: ExportRequest,
    prefix: str,
    checkpoints: CheckpointStore | None = None,
) -> ExportPlan:
    """Count the rows (progress denominator) and fix the high-water mark, in one snapshot.

    With a checkpoint store, a retry of the same export reuses the cut its first attempt fixed,
    so rows inserted between a crash and the resume stay out, as they would have.
    """
    spec = catalog.resource(request.resource)
    location = ExportLocation(prefix, request.tenant_id, request.resource, request.export_id)
    with connect(conninfo) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        types = introspect_columns(conn, spec)
        fingerprint = request_fingerprint(request, spec.key, types)
        cut = checkpoints.cut(location.folder, types[spec.key].pg_type) if checkpoints else None
        resumed = cut is not None and cut.fingerprint == fingerprint
        if not resumed:
            query = ExportQuery(spec, request, types)
            stmt, params = query.count_and_high_water_mark()
            row = conn.execute(stmt, params).fetchone()
            rows_total, hwm = (int(row[0]), row[1]) if row else (0, None)
            cut = Cut(fingerprint, rows_total, hwm, time.time())
    assert cut is not None
    if request.format == "pdf":
        check_pdf_rows(cut.rows_total)  # a report is for people: refused before anything is written
    if checkpoints and not resumed:
        checkpoints.save_cut(location.folder, cut)
    if checkpoints:
        checkpoints.claim(location.folder)
    return ExportPlan(
        request=request,
        types=types,
        rows_total=cut.rows_total,
        high_water_mark=cut.high_water_mark,
        location=location,
        key_column=spec.key,
        # A resumed export keeps its first attempt's time: a PDF title shows it, byte for byte.
        planned_at=cut.planned_at if cut.planned_at is not None else time.time(),
        fingerprint=fingerprint,
        resumed=resumed,
    )


@dataclass(frozen=True)
class ReaderStart:
    """Where the reader begins: after the last file or part an earlier attempt checkpointed."""

    files_done: int = 0
    after: Any = None
    batch_rows: int = FIRST_BATCH_ROWS
    continue_rows: int | None = None  # set: the first file is an open upload, with this many rows


# Events from the reader thread to the encoder loop; anything else on the queue is row data.
class _Control:
    pass


@dataclass(frozen=True)
class _FileStart(_Control):
    snapshot: str
    after: Any  # where the file's rows start (a restarted file starts here again)
    batch_rows: int
    continued: bool = False


@dataclass(frozen=True)
class _RangeDone(_Control):
    key_range: KeyRange
    next_batch_rows: int


class _FileEnd(_Control):
    pass


class _Done(_Control):
    pass


@dataclass(frozen=True)
class _Failed(_Control):
    error: BaseException


class _Reader(threading.Thread):
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
            self._put(_Done())
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            with contextlib.suppress(_Stopped):
                self._put(_Failed(exc))

    def _empty_file(self, snapshot: str) -> None:
        """A file with no rows: the header, or for Arrow a zero-row batch carrying the types.
        Read here, on the reader's own connection: connections are not shared across threads."""
        self._put(_FileStart(snapshot, None, self.start_at.batch_rows))
        if isinstance(self.source, ArrowSource):
            self._put(self.source.empty_batch())
        self._put(_FileEnd())

    def _produce(self) -> None:
        max_rows = self.plan.request.max_rows_per_file
        start = self.start_at
        after, batch_rows, files = start.after, start.batch_rows, start.files_done
        continuing = start.continue_rows is not None
        if self.plan.high_water_mark is None:
            # No matching rows at plan time: one file with just the header / schema.
            snapshot = self.source.begin_file()
            if continuing:
                self._put(_FileStart(snapshot, after, batch_rows, continued=True))
                self._put(_FileEnd())
            elif files == 0:
                self._empty_file(snapshot)
            self.source.end_file()
            return
        while True:
            snapshot = self.source.begin_file()
            rows_in_file = 0
            started = exhausted = False
            if continuing:
                self._put(_FileStart(snapshot, after, batch_rows, continued=True))
                rows_in_file, started, files, continuing = start.continue_rows or 0, True, files + 1, False
            while max_rows is None or rows_in_file < max_rows:
                limit = batch_rows if max_rows is None else min(batch_rows, max_rows - rows_in_file)
                key_range = self.source.next_range(after, limit)
                if key_range is None:
                    exhausted = True
                    break
                if not started:
                    self._put(_FileStart(snapshot, after, batch_rows))
                    started, files = True, files + 1
                nbytes = 0
                for chunk in self.source.read(key_range):
                    nbytes += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
                    self._put(chunk)
                batch_rows = next_batch_rows(key_range.rows, nbytes)
                self._put(_RangeDone(key_range, batch_rows))
                rows_in_file += key_range.rows
                after = key_range.last
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


@dataclass(frozen=True)
class _PartMeta:
    """Where the reader stood when a part was cut: what its checkpoint records."""

    rows: int  # rows in this part
    rows_in_file: int
    first_key: Any
    last_key: Any
    next_batch_rows: int


class _PartUploader:
    """Uploads parts of one file with at most `limit` in flight; reports each finished part, in
    order, as soon as it and all before it are done (so a later failure loses no checkpoint)."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        sink: MultipartSink,
        limit: int,
        on_done: Callable[[UploadedPart, _PartMeta], None],
        done: list[UploadedPart] | None = None,
    ) -> None:
        self.pool, self.sink, self.limit, self.on_done = pool, sink, limit, on_done
        self.pending: list[tuple[Future[UploadedPart], _PartMeta]] = []
        self.done: list[UploadedPart] = list(done or [])

    def submit(self, number: int, data: bytes, meta: _PartMeta) -> None:
        self.pending.append((self.pool.submit(self.sink.upload_part, number, data), meta))
        while len(self.pending) >= self.limit:
            self._wait_oldest()
        while self.pending and self.pending[0][0].done():
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        fut, meta = self.pending[0]
        part = fut.result()
        self.pending.pop(0)
        self.done.append(part)
        self.on_done(part, meta)

    def drain(self) -> None:
        while self.pending:
            self._wait_oldest()

    def cancel(self) -> None:
        for fut, _ in self.pending:
            fut.cancel()
        for fut, _ in self.pending:
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


@dataclass
class _OpenFile:
    """A file an earlier attempt left half-uploaded, to be continued."""

    checkpoint: FileCheckpoint
    sink: MultipartSink


@dataclass
class _Resume:
    files: list[FileResult]
    start: ReaderStart
    open_file: _OpenFile | None = None
    parts_before: int = 0


class _Export:
    """One run of run_export: the encoder loop, S3 sinks and checkpoints."""

    def __init__(
        self,
        plan: ExportPlan,
        encoder_cls: type[Encoder],
        client: Any,
        bucket: str,
        part_size: int,
        max_parts_in_flight: int,
        checkpoints: CheckpointStore | None,
        on_progress: Callable[[ExportProgress], None] | None,
    ) -> None:
        self.plan, self.encoder_cls, self.client, self.bucket = plan, encoder_cls, client, bucket
        self.part_size, self.limit, self.checkpoints, self.on_progress = (
            part_size,
            max_parts_in_flight,
            checkpoints,
            on_progress,
        )
        self.folder = plan.location.folder
        self.pool = ThreadPoolExecutor(max_workers=max_parts_in_flight, thread_name_prefix="export-upload")
        self.files: list[FileResult] = []
        self.totals = {"rows": 0, "bytes": 0, "parts": 0}
        self.output_types: dict[str, str] = {}
        self.resume = _Resume(files=[], start=ReaderStart())
        # The file being written
        self.encoder: Encoder | None = None
        self.sink: MultipartSink | None = None
        self.uploader: _PartUploader | None = None
        self.current = FileResult(key="")
        self.buf = bytearray()
        self.part_rows = 0
        self.part_last: Any = None
        self.next_batch = FIRST_BATCH_ROWS
        self.digest: Any = None  # None for a continued file: its hash is read back after complete

    # -- resuming ----------------------------------------------------------------------

    def _new_sink(self, number: int, key: str, token: str, upload_id: str | None = None) -> MultipartSink:
        encoder = self.encoder_cls(self.plan.columns, self.plan.request.compression)
        return MultipartSink(
            self.client,
            self.bucket,
            key,
            content_type=encoder.content_type,
            metadata=_object_metadata(self.plan, number),
            content_disposition=attachment(download_name(self.plan, number, encoder.extension)),
            upload_token=token,
            upload_id=upload_id,
        )

    def prepare(self) -> ReaderStart:
        """Load the checkpoint: keep complete files, continue or restart the open one."""
        store = self.checkpoints
        keep: frozenset[str] = frozenset()
        if store is not None:
            store.claim(self.folder)
            saved = store.files(self.folder, self.plan.key_type)
            if any(f.fingerprint != self.plan.fingerprint for f in saved):
                # The request changed since those were written: none of them can be reused.
                store.drop_files_from(self.folder, 1)
                saved = []
            self.resume = self._resume_from(saved)
            if self.resume.open_file is not None:
                keep = frozenset({self.resume.open_file.sink.upload_id or ""})
        # Uploads no checkpoint names (a crash between create and record, a superseded attempt).
        abort_uploads(self.client, self.bucket, self.folder, keep)
        self.files = list(self.resume.files)
        self.totals["rows"] = sum(f.rows for f in self.files)
        self.totals["bytes"] = sum(f.bytes for f in self.files)
        self.totals["parts"] = sum(f.parts for f in self.files)
        if self.resume.open_file:
            parts = self.resume.open_file.checkpoint.parts
            self.totals["rows"] += parts[-1].rows_in_file
            self.totals["bytes"] += sum(p.size for p in parts)
            self.totals["parts"] += len(parts)
        return self.resume.start

    def _resume_from(self, saved: list[FileCheckpoint]) -> _Resume:
        store = self.checkpoints
        assert store is not None
        done: list[FileResult] = []
        start = ReaderStart()
        for f in saved:
            if f.number != len(done) + 1:
                break
            if f.complete:
                done.append(_file_result(f))
                batch = f.parts[-1].next_batch_rows if f.parts else start.batch_rows
                start = ReaderStart(len(done), f.last_key, batch)
                continue
            sink = self._new_sink(f.number, f.key, f.upload_token, f.upload_id)
            etags = sink.uploaded_etags()
            if etags is None and f.parts and sink.completed_by_us(sum(p.size for p in f.parts)):
                # The crash came after CompleteMultipartUpload but before we recorded it.
                result = _file_result(f)
                result.sha256 = object_sha256(self.client, self.bucket, f.key)
                store.complete_file(self.folder, _file_checkpoint(self.plan, f.number, result))
                done.append(result)
                # An uploading row has no last key of its own: the file's parts have it.
                start = ReaderStart(len(done), result.last_key, f.parts[-1].next_batch_rows)
                continue
            if (
                etags is not None
                and self.encoder_cls.resumable
                and f.part_size == self.part_size
                and f.parts
                and all(p.etag in etags.get(p.number, ()) for p in f.parts)
            ):
                last = f.parts[-1]
                start = ReaderStart(len(done), last.last_key, last.next_batch_rows, last.rows_in_file)
                return _Resume(done, start, _OpenFile(f, sink))
            # Not continuable (format restarts at file boundaries, upload gone, parts missing):
            # this file starts again from where it started.
            sink.abort()
            start = ReaderStart(len(done), f.start_after, f.start_batch_rows)
            break
        store.drop_files_from(self.folder, len(done) + 1)
        return _Resume(done, start)

    # -- the encoder loop ------------------------------------------------------------------

    def _part_done(self, part: UploadedPart, meta: _PartMeta) -> None:
        """One checkpoint and one progress event per uploaded part."""
        if self.checkpoints is not None:
            self.checkpoints.record_part(
                self.folder,
                len(self.files) + 1,
                PartCheckpoint(
                    part.number,
                    part.etag,
                    part.checksum_sha256,
                    part.size,
                    meta.rows_in_file,
                    meta.first_key,
                    meta.last_key,
                    meta.next_batch_rows,
                ),
            )
        self.totals["rows"] += meta.rows
        self.totals["bytes"] += part.size
        self.totals["parts"] += 1
        if self.on_progress:
            self.on_progress(
                ExportProgress(
                    rows_exported=self.totals["rows"],
                    rows_total=self.plan.rows_total,
                    bytes_written=self.totals["bytes"],
                    parts_uploaded=self.totals["parts"],
                    files_completed=len(self.files),
                    file_key=self.current.key,
                )
            )

    def _ship(self) -> None:
        assert self.uploader is not None
        cur = self.current
        cur.parts += 1
        data = bytes(self.buf)
        if self.digest is not None:
            self.digest.update(data)
        cur.bytes += len(data)
        meta = _PartMeta(self.part_rows, cur.rows, cur.first_key, self.part_last, self.next_batch)
        self.uploader.submit(cur.parts, data, meta)
        self.buf = bytearray()
        self.part_rows = 0

    def _start_file(self, event: _FileStart) -> None:
        number = len(self.files) + 1
        self.encoder = self.encoder_cls(self.plan.columns, self.plan.request.compression)
        self.part_rows, self.part_last = 0, None
        if event.continued:
            open_file = self.resume.open_file
            assert open_file is not None
            f, self.sink = open_file.checkpoint, open_file.sink
            last = f.parts[-1]
            self.current = _file_result(f)
            self.current.snapshot = (
                f"{f.snapshot} (parts 1-{len(f.parts)}), {event.snapshot} (from part {len(f.parts) + 1})"
            )
            self.current.resumed_at_part = len(f.parts) + 1
            self.part_last, self.next_batch = last.last_key, last.next_batch_rows
            self.digest = None
            done = [UploadedPart(p.number, p.etag, p.checksum_sha256, p.size) for p in f.parts]
            self.uploader = _PartUploader(self.pool, self.sink, self.limit, self._part_done, done)
            self.buf = bytearray(self.encoder.resume())
            return
        self.encoder.describe(_report_context(self.plan))
        key = self.plan.location.file_key(number, self.encoder.extension)
        token = uuid.uuid4().hex
        self.current = FileResult(key=key, snapshot=event.snapshot)
        self.digest = hashlib.sha256()
        self.next_batch = event.batch_rows
        self.sink = self._new_sink(number, key, token)
        if self.checkpoints is not None:
            # Recorded before the upload exists, so a crash in between leaves a findable orphan.
            self.checkpoints.start_file(
                self.folder,
                FileCheckpoint(
                    number=number,
                    fingerprint=self.plan.fingerprint,
                    key=key,
                    upload_id=None,
                    upload_token=token,
                    part_size=self.part_size,
                    start_after=event.after,
                    start_batch_rows=event.batch_rows,
                    snapshot=event.snapshot,
                    status="uploading",
                ),
            )
        upload_id = self.sink.start()
        if self.checkpoints is not None:
            self.checkpoints.set_upload(self.folder, number, upload_id)
        self.uploader = _PartUploader(self.pool, self.sink, self.limit, self._part_done)
        self.buf = bytearray(self.encoder.begin())

    def _end_file(self) -> None:
        assert self.encoder is not None and self.sink is not None and self.uploader is not None
        cur = self.current
        self.buf += self.encoder.finish()
        if self.buf or cur.parts == 0:
            self._ship()
        self.uploader.drain()
        self.sink.complete(self.uploader.done)
        cur.sha256 = (
            self.digest.hexdigest()
            if self.digest is not None
            else object_sha256(self.client, self.bucket, cur.key)
        )
        self.output_types = self.encoder.output_types()
        if self.checkpoints is not None:
            self.checkpoints.complete_file(self.folder, _file_checkpoint(self.plan, len(self.files) + 1, cur))
        self.files.append(cur)
        self.sink = self.uploader = None

    def consume(self, events: queue.Queue[Any]) -> None:
        resumable = self.encoder_cls.resumable
        while True:
            event = events.get()
            if not isinstance(event, _Control):
                assert self.encoder is not None
                self.buf += self.encoder.encode(event)
                if not resumable and len(self.buf) >= part_size_for(self.current.parts + 1, self.part_size):
                    self._ship()
            elif isinstance(event, _RangeDone):
                kr, cur = event.key_range, self.current
                cur.rows += kr.rows
                self.part_rows += kr.rows
                self.part_last, self.next_batch = kr.last, event.next_batch_rows
                if cur.first_key is None:
                    cur.first_key = kr.first
                cur.last_key = kr.last
                assert self.encoder is not None
                if resumable and len(self.buf) >= part_size_for(cur.parts + 1, self.part_size):
                    self.buf += self.encoder.cut()
                    self._ship()
            elif isinstance(event, _FileStart):
                self._start_file(event)
            elif isinstance(event, _FileEnd):
                self._end_file()
            elif isinstance(event, _Failed):
                raise event.error
            else:  # _Done
                return

    def fail(self, abort: bool) -> None:
        """After an error: stop uploads; abort the open one unless a retry will continue it."""
        if self.uploader is not None:
            self.uploader.cancel()
        if abort:
            if self.sink is not None:
                self.sink.abort()
            elif self.resume.open_file is not None:
                self.resume.open_file.sink.abort()
            if self.checkpoints is not None:
                with contextlib.suppress(Exception):
                    self.checkpoints.drop_open_files(self.folder)


def _file_result(f: FileCheckpoint) -> FileResult:
    """A file's totals from its checkpoint (complete, or all parts uploaded)."""
    if f.complete:
        return FileResult(
            key=f.key,
            rows=f.rows,
            bytes=f.bytes,
            sha256=f.sha256,
            first_key=f.first_key,
            last_key=f.last_key,
            parts=f.parts_count,
            snapshot=f.snapshot,
        )
    last = f.parts[-1]
    return FileResult(
        key=f.key,
        rows=last.rows_in_file,
        bytes=sum(p.size for p in f.parts),
        first_key=last.first_key,
        last_key=last.last_key,
        parts=len(f.parts),
        snapshot=f.snapshot,
    )


def _file_checkpoint(plan: ExportPlan, number: int, cur: FileResult) -> FileCheckpoint:
    return FileCheckpoint(
        number=number,
        fingerprint=plan.fingerprint,
        key=cur.key,
        upload_id=None,
        upload_token="",
        part_size=0,
        start_after=None,
        start_batch_rows=0,
        snapshot=cur.snapshot,
        status="complete",
        rows=cur.rows,
        bytes=cur.bytes,
        parts_count=cur.parts,
        sha256=cur.sha256,
        first_key=cur.first_key,
        last_key=cur.last_key,
    )


def abandon_open_uploads(client: Any, bucket: str, folder: str, checkpoints: CheckpointStore | None) -> int:
    """A failed export that will not be retried: abort its open uploads. Complete files stay
    checkpointed, so a re-request of the same export still resumes at the file boundary."""
    if checkpoints is not None:
        checkpoints.drop_open_files(folder)
    return abort_uploads(client, bucket, folder)


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
    checkpoints: CheckpointStore | None = None,
    abort_on_error: bool = True,
) -> ExportOutcome:
    """Stream the planned export into S3 files.

    With a checkpoint store, every uploaded part is recorded, and a call for the same export
    (same folder and fingerprint) continues from the last recorded part (formats that can be
    cut at parts) or the last complete file. On error the open upload is aborted, unless
    `abort_on_error` is False (a retry is coming and will continue it).
    """
    started = time.monotonic()
    encoder_cls = encoder_class(plan.request.format)
    export = _Export(
        plan, encoder_cls, s3_client, bucket, part_size, max_parts_in_flight, checkpoints, on_progress
    )
    try:
        start = export.prepare()
    except BaseException:
        export.pool.shutdown(wait=True, cancel_futures=True)
        raise
    source = make_source(conninfo, plan, encoder_cls, catalog)
    events: queue.Queue[Any] = queue.Queue(
        maxsize=QUEUE_ITEMS if encoder_cls.input_kind == "pg_csv" else ARROW_QUEUE_ITEMS
    )
    reader = _Reader(source, plan, events, start)
    reader.start()
    try:
        export.consume(events)
    except BaseException:
        export.fail(abort=abort_on_error or checkpoints is None)
        raise
    finally:
        reader.stop.set()
        reader.join(timeout=30)
        export.pool.shutdown(wait=True, cancel_futures=True)
        source.close()
    if not export.output_types:  # every file came from the checkpoint
        export.output_types = encoder_cls(plan.columns, plan.request.compression).output_types()
    seconds = time.monotonic() - started
    return ExportOutcome(files=export.files, output_types=export.output_types, seconds=seconds)


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


def _report_context(plan: ExportPlan) -> dict[str, str]:
    """What a report's title shows (PDF): tenant, resource, filters, when the export was planned."""
    req = plan.request
    filters = [f"{k} = {', '.join(v)}" for k, v in sorted(req.filters.items())]
    if req.date_from:
        filters.append(f"from {req.date_from.isoformat()}")
    if req.date_to:
        filters.append(f"before {req.date_to.isoformat()}")
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(plan.planned_at))
    return {
        "tenant": req.tenant_id,
        "resource": req.resource,
        "filters": "; ".join(filters),
        "generated_at": generated,
    }
