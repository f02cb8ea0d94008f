"""Resuming an export from its checkpoint: keep the complete files, continue the open upload
where a format allows it (docs/operations.md), restart the rest; and abandoning the
open uploads of an export that will not be retried."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from export_pipelines.core.engine.checkpoints import CheckpointStore, FileCheckpoint
from export_pipelines.core.engine.plan import ExportPlan
from export_pipelines.core.engine.reader import ReaderStart
from export_pipelines.core.engine.upload import file_sink
from export_pipelines.core.results import FileResult
from export_pipelines.core.storage.s3 import MultipartSink, abort_uploads, object_sha256


@dataclass
class OpenFile:
    """A file an earlier attempt left half-uploaded, to be continued."""

    checkpoint: FileCheckpoint
    sink: MultipartSink


@dataclass
class Resume:
    """Where this attempt starts: the files already complete, and maybe an upload to continue."""

    files: list[FileResult]
    start: ReaderStart
    open_file: OpenFile | None = None

    def totals(self) -> tuple[int, int, int]:
        """Rows, bytes and parts already uploaded (the progress this attempt starts from)."""
        rows = sum(f.rows for f in self.files)
        size = sum(f.bytes for f in self.files)
        parts = sum(f.parts for f in self.files)
        if self.open_file:
            uploaded = self.open_file.checkpoint.parts
            rows += uploaded[-1].rows_in_file
            size += sum(p.size for p in uploaded)
            parts += len(uploaded)
        return rows, size, parts


def resume_export(
    plan: ExportPlan,
    client: Any,
    bucket: str,
    checkpoints: CheckpointStore | None,
    *,
    resumable: bool,
    part_size: int,
    sink_factory: Any = None,
) -> Resume:
    """Load the checkpoint: keep complete files, continue or restart the open one; abort every
    other upload under the export's folder. `sink_factory(key, token)`: a destination's own sinks
    (which say what they hold: `uploaded_etags`, `completed_by_us`, `read_sha256`) instead of S3's."""
    folder = plan.location.folder
    resume = Resume(files=[], start=ReaderStart())
    keep: frozenset[str] = frozenset()
    if checkpoints is not None:
        checkpoints.claim(folder)
        saved = checkpoints.files(folder, plan.key_type)
        if any(f.fingerprint != plan.fingerprint for f in saved):
            # The request changed since those were written: none of them can be reused.
            checkpoints.drop_files_from(folder, 1)
            saved = []
        resume = _resume_from(saved, plan, client, bucket, checkpoints, resumable, part_size, sink_factory)
        if resume.open_file is not None:
            keep = frozenset({resume.open_file.sink.upload_id or ""})
    if sink_factory is None:
        # Uploads no checkpoint names (a crash between create and record, a superseded attempt).
        abort_uploads(client, bucket, folder, keep)
    return resume


def _resume_from(
    saved: list[FileCheckpoint],
    plan: ExportPlan,
    client: Any,
    bucket: str,
    store: CheckpointStore,
    resumable: bool,
    part_size: int,
    sink_factory: Any = None,
) -> Resume:
    folder = plan.location.folder
    done: list[FileResult] = []
    start = ReaderStart()
    for f in saved:
        if f.number != len(done) + 1:
            break
        if f.complete:
            done.append(file_result(f))
            batch = f.parts[-1].next_batch_rows if f.parts else start.batch_rows
            start = ReaderStart(len(done), f.last_key, batch)
            continue
        if sink_factory is not None:
            sink = sink_factory(f.key, f.upload_token)
            sink.upload_id = f.upload_id
        else:
            sink = file_sink(client, bucket, plan, f.number, f.key, f.upload_token, f.upload_id)
        etags = sink.uploaded_etags()
        if etags is None and f.parts and sink.completed_by_us(sum(p.size for p in f.parts)):
            # The crash came after CompleteMultipartUpload but before we recorded it.
            result = file_result(f)
            result.sha256 = (
                sink.read_sha256() if sink_factory is not None else object_sha256(client, bucket, f.key)
            )
            store.complete_file(folder, file_checkpoint(plan, f.number, result))
            done.append(result)
            # An uploading row has no last key of its own: the file's parts have it.
            start = ReaderStart(len(done), result.last_key, f.parts[-1].next_batch_rows)
            continue
        if (
            etags is not None
            and resumable
            and f.part_size == part_size
            and f.parts
            and all(p.etag in etags.get(p.number, ()) for p in f.parts)
        ):
            last = f.parts[-1]
            start = ReaderStart(len(done), last.last_key, last.next_batch_rows, last.rows_in_file)
            return Resume(done, start, OpenFile(f, sink))
        # Not continuable (format restarts at file boundaries, upload gone, parts missing):
        # this file starts again from where it started.
        sink.abort()
        start = ReaderStart(len(done), f.start_after, f.start_batch_rows)
        break
    store.drop_files_from(folder, len(done) + 1)
    return Resume(done, start)


def file_result(f: FileCheckpoint) -> FileResult:
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


def file_checkpoint(plan: ExportPlan, number: int, cur: FileResult) -> FileCheckpoint:
    """The checkpoint row of a complete file."""
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
