"""The streaming core: read → encode → upload one planned export, with memory that stays flat.

Three stages overlap: a reader thread (reader.py) streams keyset batches from PostgreSQL into a
bounded queue; the calling thread encodes/compresses and cuts S3 parts; a small pool uploads at
most `max_parts_in_flight` parts at once (upload.py). zlib, pyarrow and sockets release the GIL,
so on two cores the database read, the compressor and the upload run side by side. Every part
is checkpointed, so a retry continues where this attempt stopped (resume.py).
"""

from __future__ import annotations

import contextlib
import queue
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from export_pipelines.core.engine.checkpoints import CheckpointStore, FileCheckpoint, PartCheckpoint
from export_pipelines.core.engine.encoders.base import Encoder
from export_pipelines.core.engine.encoders.registry import encoder_class
from export_pipelines.core.engine.encoders.special_values import Counter, add_counts, as_counts, counters
from export_pipelines.core.engine.encoders.type_contract import rule_for
from export_pipelines.core.engine.plan import ExportPlan, report_context
from export_pipelines.core.engine.reader import (
    Control,
    Failed,
    FileEnd,
    FileStart,
    RangeDone,
    Reader,
    ReaderStart,
    event_queue,
    make_source,
)
from export_pipelines.core.engine.resume import Resume, file_checkpoint, file_result, resume_export
from export_pipelines.core.engine.sources import RowSource
from export_pipelines.core.engine.upload import DEFAULT_PART_SIZE, PartWriter, file_sink
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.core.requests.request import OP_COLUMN
from export_pipelines.core.results import ExportOutcome, ExportProgress, FileResult
from export_pipelines.core.storage.s3 import UploadedPart, object_sha256

# Progress between parts: at most one report per this many seconds while rows are encoded (a part
# is 8 MiB: a few thousand rows of a slow format would otherwise sit at 0 % until the end).
PROGRESS_EVERY_SECONDS = 1.0
DELETE_KEY = "delete"


@dataclass(frozen=True)
class PartMeta:
    """Where the reader stood when a part was cut: what its checkpoint records."""

    rows: int  # rows in this part
    rows_in_file: int
    first_key: Any
    last_key: Any
    next_batch_rows: int


class _Export:
    """One run of run_export: the encoder loop, one part writer per file, checkpoints, progress."""

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
        keep_open_upload: bool,
        special: tuple[Counter, ...] = (),
        rows_progress_seconds: float | None = None,
        sink_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.plan, self.encoder_cls, self.client, self.bucket = plan, encoder_cls, client, bucket
        self.part_size, self.max_parts_in_flight = part_size, max_parts_in_flight
        self.checkpoints, self.on_progress = checkpoints, on_progress
        self.keep_open_upload = keep_open_upload  # on error: a retry will continue the open upload
        # A destination's own sink per file key (e.g. SFTP); None: a multipart upload to `bucket`.
        self.sink_factory = sink_factory
        self.folder = plan.location.folder
        self.pool = ThreadPoolExecutor(max_workers=max_parts_in_flight, thread_name_prefix="export-upload")
        self.files: list[FileResult] = []
        self.totals = {"rows": 0, "bytes": 0, "parts": 0}
        self.output_types: dict[str, str] = {}
        self.resume = Resume(files=[], start=ReaderStart())
        # The file being written, and where the reader stood at its last range end
        self.current = FileResult(key="")
        self.part_rows = 0
        self.part_last: Any = None
        self.next_batch = 0
        # Special values: counters (one per column and key), the open file's counts, and the
        # key ranges of rows an earlier attempt wrote, to count again at the end.
        self.special = special
        self.counts = [0] * len(special)
        self.recounts: list[tuple[FileResult, Any, Any]] = []
        # Rows read and encoded so far (the uploaded ones and those in the open part): progress.
        self.rows_seen = 0
        self.range_rows_seen = 0
        # The first rows are reported at once, then about every rows_progress_seconds: a format
        # that renders at its end (PDF) reads a few thousand rows in well under a second.
        self.last_report = float("-inf")
        self.rows_progress_seconds = rows_progress_seconds

    def prepare(self) -> ReaderStart:
        """Load the checkpoint (resume.py) and start the progress counters from it."""
        if self.sink_factory is not None and self.checkpoints is None:  # every file is written anew
            return self.resume.start
        self.resume = resume_export(
            self.plan,
            self.client,
            self.bucket,
            self.checkpoints,
            resumable=self.encoder_cls.resumable,
            part_size=self.part_size,
            sink_factory=self.sink_factory,
        )
        self.files = list(self.resume.files)
        if self.special:
            # Files are contiguous key ranges: a complete file covers (previous last key, its last key].
            after = None
            for f in self.files:
                if f.rows:
                    self.recounts.append((f, after, f.last_key))
                    after = f.last_key
        rows, size, parts = self.resume.totals()
        self.totals = {"rows": rows, "bytes": size, "parts": parts}
        self.rows_seen = rows
        return self.resume.start

    # -- the encoder loop ------------------------------------------------------------------

    def consume(self, events: queue.Queue[Any]) -> None:
        while True:
            event = events.get()
            if isinstance(event, FileStart):
                self._write_file(event, events)
            elif isinstance(event, Failed):
                raise event.error
            else:  # Done
                return

    def _write_file(self, start: FileStart, events: queue.Queue[Any]) -> None:
        """One file, from its FileStart to its FileEnd: encode, cut parts, complete."""
        encoder = self.encoder_cls(self.plan.columns, self.plan.request.compression)
        encoder.describe(report_context(self.plan))
        resumable = self.encoder_cls.resumable
        with self._file_writer(start) as writer:
            if start.continued:
                writer.write(encoder.resume())
            else:
                self._start_upload(writer, start)
                writer.write(encoder.begin())
            while True:
                event = events.get()
                if not isinstance(event, Control):
                    writer.write(encoder.encode(event))
                    self._rows_encoded(event)
                    if not resumable and writer.part_full:
                        self._cut(writer)
                elif isinstance(event, RangeDone):
                    self._range_done(event)
                    if resumable and writer.part_full:
                        writer.write(encoder.cut())
                        self._cut(writer)
                elif isinstance(event, FileEnd):
                    if event.counts:
                        self.counts = [a + b for a, b in zip(self.counts, event.counts, strict=True)]
                    writer.write(encoder.finish())
                    writer.complete(self._part_meta())
                    self._file_complete(writer, encoder)
                    return
                elif isinstance(event, Failed):
                    raise event.error

    def _file_writer(self, start: FileStart) -> PartWriter[PartMeta]:
        """The part writer of the file `start` opens: a new upload, or the one to continue."""
        self.part_rows, self.part_last = 0, None
        self.counts = [0] * len(self.special)
        uploaded: list[UploadedPart] = []
        if start.continued:
            # Taken from the resume: from now on the writer aborts it (or keeps it) on error.
            open_file, self.resume.open_file = self.resume.open_file, None
            assert open_file is not None
            f, sink = open_file.checkpoint, open_file.sink
            last = f.parts[-1]
            self.current = file_result(f)
            self.current.snapshot = (
                f"{f.snapshot} (parts 1-{len(f.parts)}), {start.snapshot} (from part {len(f.parts) + 1})"
            )
            self.current.resumed_at_part = len(f.parts) + 1
            if self.special:  # the parts already uploaded: (file start, last part's key]
                self.recounts.append((self.current, f.start_after, last.last_key))
            self.part_last, self.next_batch = last.last_key, last.next_batch_rows
            uploaded = [UploadedPart(p.number, p.etag, p.checksum_sha256, p.size) for p in f.parts]
        else:
            number = len(self.files) + 1
            key = self.plan.location.file_key(
                number, self.encoder_cls.spec.extensions[self.plan.request.compression]
            )
            self.current = FileResult(key=key, snapshot=start.snapshot)
            self.next_batch = start.batch_rows
            if self.sink_factory is not None:
                sink = self.sink_factory(key, uuid.uuid4().hex)
            else:
                sink = file_sink(self.client, self.bucket, self.plan, number, key, uuid.uuid4().hex)
        return PartWriter(
            sink,
            self.pool,
            part_size=self.part_size,
            max_in_flight=self.max_parts_in_flight,
            on_part=self._part_done,
            uploaded=uploaded,
            keep_on_error=self.keep_open_upload,
        )

    def _start_upload(self, writer: PartWriter[PartMeta], start: FileStart) -> None:
        number, sink = len(self.files) + 1, writer.sink
        if self.checkpoints is not None:
            # Recorded before the upload exists, so a crash in between leaves a findable orphan.
            self.checkpoints.start_file(
                self.folder,
                FileCheckpoint(
                    number=number,
                    fingerprint=self.plan.fingerprint,
                    key=sink.key,
                    upload_id=None,
                    upload_token=sink.upload_token or "",
                    part_size=self.part_size,
                    start_after=start.after,
                    start_batch_rows=start.batch_rows,
                    snapshot=start.snapshot,
                    status="uploading",
                ),
            )
        upload_id = sink.start()
        if self.checkpoints is not None:
            self.checkpoints.set_upload(self.folder, number, upload_id)

    def _rows_encoded(self, chunk: Any) -> None:
        """Count a chunk's rows (an Arrow batch's exactly; a CSV chunk's by its line ends, which a
        value with a newline over-counts until its range ends) and report progress now and then."""
        n = chunk.num_rows if hasattr(chunk, "num_rows") else chunk.count(b"\n")
        self.range_rows_seen += n
        every = self.rows_progress_seconds
        if self.on_progress and every is not None and time.monotonic() - self.last_report >= every:
            self._report()

    def _report(self) -> None:
        assert self.on_progress is not None
        self.last_report = time.monotonic()
        rows = min(self.rows_seen + self.range_rows_seen, max(self.plan.rows_total, self.rows_seen))
        self.on_progress(
            ExportProgress(
                rows_exported=rows,
                rows_total=self.plan.rows_total,
                bytes_written=self.totals["bytes"],
                parts_uploaded=self.totals["parts"],
                files_completed=len(self.files),
                file_key=self.current.key,
            )
        )

    def _range_done(self, event: RangeDone) -> None:
        kr, cur = event.key_range, self.current
        self.rows_seen += kr.rows  # exact from here on
        self.range_rows_seen = 0
        cur.rows += kr.rows
        self.part_rows += kr.rows
        self.part_last, self.next_batch = kr.last, event.next_batch_rows
        if cur.first_key is None:
            cur.first_key = kr.first
        cur.last_key = kr.last

    def _part_meta(self) -> PartMeta:
        cur = self.current
        return PartMeta(self.part_rows, cur.rows, cur.first_key, self.part_last, self.next_batch)

    def _cut(self, writer: PartWriter[PartMeta]) -> None:
        writer.cut(self._part_meta())
        self.current.parts, self.current.bytes = writer.parts, writer.bytes
        self.part_rows = 0

    def _file_complete(self, writer: PartWriter[PartMeta], encoder: Encoder) -> None:
        cur = self.current
        cur.parts, cur.bytes = writer.parts, writer.bytes
        sha256 = writer.sha256
        if sha256 is None:  # a continued file: its first parts were written by an earlier attempt
            sha256 = (
                writer.sink.read_sha256()
                if self.sink_factory is not None
                else object_sha256(self.client, self.bucket, cur.key)
            )
        cur.sha256 = sha256
        self.output_types = encoder.output_types()
        cur.special_values = as_counts(self.special, self.counts)
        cur.deletes = cur.special_values.get(OP_COLUMN, {}).pop(DELETE_KEY, 0)
        add_counts(cur.special_values, encoder.special_counts())
        cur.special_values = self._ordered(cur.special_values)
        if self.checkpoints is not None:
            self.checkpoints.complete_file(self.folder, file_checkpoint(self.plan, len(self.files) + 1, cur))
        self.files.append(cur)

    def _ordered(self, counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """Columns in export order, keys in the order of the column's rule (as the manifest's
        columns[].special_values lists them)."""
        out = {}
        for col in self.plan.columns:
            if col.name in counts:
                keys = rule_for(col).special_values(self.plan.request.format)
                out[col.name] = {k: counts[col.name][k] for k in keys if k in counts[col.name]}
        return out

    def recount(self, source: RowSource) -> None:
        """Count the special values of rows an earlier attempt wrote (kept files, and the parts of
        a continued file), in a snapshot of their own: the checkpoint does not hold their counts."""
        for result, after, upto in self.recounts:
            add_counts(result.special_values, as_counts(self.special, source.count_range(after, upto)))
            result.special_values = self._ordered(result.special_values)
            result.special_values_recounted = True

    def _part_done(self, part: UploadedPart, meta: PartMeta) -> None:
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
            self._report()

    def fail(self) -> None:
        """After an error (the open file's writer has stopped its uploads): unless a retry will
        continue it, abort an upload left to continue that this attempt never reached."""
        if self.keep_open_upload:
            return
        if self.resume.open_file is not None:
            self.resume.open_file.sink.abort()
        if self.checkpoints is not None:
            with contextlib.suppress(Exception):
                self.checkpoints.drop_open_files(self.folder)


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
    statement_timeout_seconds: float | None = None,
    rows_progress_seconds: float | None = None,
    sink_factory: Callable[..., Any] | None = None,
) -> ExportOutcome:
    """Stream the planned export into S3 files.

    `on_progress` hears of every uploaded part; with `rows_progress_seconds`, also about that
    often while rows are encoded between parts (PROGRESS_EVERY_SECONDS is what the jobs use).

    With a checkpoint store, every uploaded part is recorded, and a call for the same export
    (same folder and fingerprint) continues from the last recorded part (formats that can be
    cut at parts) or the last complete file. On error the open upload is aborted, unless
    `abort_on_error` is False (a retry is coming and will continue it). `sink_factory(key, token)`
    gives each file's sink instead of a multipart upload to `bucket` (a destination's own, e.g. SFTP);
    with checkpoints too, its sinks must say what they hold (Azure block lists), as S3's do.
    """
    started = time.monotonic()
    encoder_cls = encoder_class(plan.request.format)
    special = tuple(counters(plan.columns, plan.request.format))
    if plan.request.feed is not None:
        checkpoints = None  # one snapshot per delivery: a retry starts over (plan.py)
        # Deletes are counted by PostgreSQL with the range bounds, like the special values.
        special = (
            *special,
            Counter(OP_COLUMN, DELETE_KEY, sql.SQL("{} = 'delete'").format(sql.Identifier(OP_COLUMN))),
        )
    export = _Export(
        plan,
        encoder_cls,
        s3_client,
        bucket,
        part_size,
        max_parts_in_flight,
        checkpoints,
        on_progress,
        keep_open_upload=not abort_on_error and checkpoints is not None,
        special=special,
        rows_progress_seconds=rows_progress_seconds,
        sink_factory=sink_factory,
    )
    try:
        start = export.prepare()
    except BaseException:
        export.pool.shutdown(wait=True, cancel_futures=True)
        raise
    source = make_source(conninfo, plan, encoder_cls, catalog, statement_timeout_seconds, special)
    events = event_queue(encoder_cls)
    reader = Reader(source, plan, events, start)
    reader.start()
    try:
        export.consume(events)
        reader.join(timeout=30)  # done: the source's connection is free for the recount
        export.recount(source)
    except BaseException:
        export.fail()
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
