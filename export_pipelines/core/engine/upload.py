"""Writing one export file to S3: a part writer over one multipart upload.

`PartWriter` owns the bytes waiting for the next part, the part sizes, the uploads in flight
(at most `max_in_flight`, in a shared pool), completion and abort. Each finished part is
reported to `on_part`, in order, as soon as it and all before it are uploaded, so a later
failure loses no checkpoint. Used as a context manager it aborts the upload when the block
exits on an error, unless `keep_on_error` says a retry will continue it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, Generic, TypeVar

from export_pipelines.core.engine.plan import ExportPlan
from export_pipelines.core.formats import format_spec
from export_pipelines.core.storage.layout import attachment, download_name, object_metadata
from export_pipelines.core.storage.s3 import MultipartSink, UploadedPart

DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
PART_GROWTH_EVERY = 1_000  # the part size doubles every 1,000 parts: 10,000 parts reach ~5 TB
WAIT_SLICE_SECONDS = 0.5

Meta = TypeVar("Meta")  # what the caller attaches to a part, handed back with it to `on_part`


def part_size_for(part_number: int, base: int) -> int:
    """Target size of part `part_number` (1-based): grows so a file never needs 10,000+ parts."""
    return max(base, MIN_PART_SIZE) * (2 ** ((part_number - 1) // PART_GROWTH_EVERY))


def file_sink(
    client: Any,
    bucket: str,
    plan: ExportPlan,
    number: int,
    key: str,
    token: str,
    upload_id: str | None = None,
) -> MultipartSink:
    """The multipart upload of export file `number` (`upload_id` given: one an earlier attempt began)."""
    req = plan.request
    spec = format_spec(req.format)
    extension = spec.extensions[req.compression]
    return MultipartSink(
        client,
        bucket,
        key,
        content_type=spec.content_types[req.compression],
        metadata=object_metadata(plan.location, req.format, number),
        content_disposition=attachment(download_name(plan.location, number, extension)),
        upload_token=token,
        upload_id=upload_id,
    )


class PartWriter(Generic[Meta]):
    """One file's multipart upload: buffer, ordered parallel part uploads, complete or abort."""

    def __init__(
        self,
        sink: MultipartSink,
        pool: ThreadPoolExecutor,
        *,
        part_size: int,
        max_in_flight: int,
        on_part: Callable[[UploadedPart, Meta], None],
        uploaded: Sequence[UploadedPart] = (),
        keep_on_error: bool = False,
    ) -> None:
        """`uploaded`: the parts an earlier attempt uploaded, when continuing its upload.
        `keep_on_error`: an error leaves the upload open, for a retry to continue."""
        self.sink, self.pool, self.part_size, self.max_in_flight = sink, pool, part_size, max_in_flight
        self.on_part = on_part
        # A BytesIO, not a bytearray: getvalue() hands over its bytes without copying the part.
        self.buffer = io.BytesIO()
        self.uploaded: list[UploadedPart] = list(uploaded)
        self.parts = len(self.uploaded)  # parts cut so far, uploaded or in flight
        self.bytes = sum(p.size for p in self.uploaded)
        # The hash of the file's bytes; a continued file's is read back once it is complete.
        self._digest: Any = None if self.uploaded else hashlib.sha256()
        self._pending: list[tuple[Future[UploadedPart], Meta]] = []
        self.keep_on_error = keep_on_error

    @property
    def sha256(self) -> str | None:
        """Hex SHA-256 of every byte written, or None for a continued file (its first bytes are not here)."""
        return self._digest.hexdigest() if self._digest is not None else None

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    @property
    def part_full(self) -> bool:
        """Whether the buffer holds a whole next part."""
        return self.buffer.tell() >= part_size_for(self.parts + 1, self.part_size)

    def cut(self, meta: Meta) -> None:
        """Upload the buffer as the next part; waits while `max_in_flight` parts are in flight."""
        data = self.buffer.getvalue()
        self.buffer = io.BytesIO()
        self.parts += 1
        self.bytes += len(data)
        if self._digest is not None:
            self._digest.update(data)
        self._pending.append((self.pool.submit(self.sink.upload_part, self.parts, data), meta))
        while len(self._pending) >= self.max_in_flight:
            self._finish_oldest()
        while self._pending and self._pending[0][0].done():
            self._finish_oldest()

    def complete(self, meta: Meta) -> None:
        """Upload what is left (a file has at least one part), wait for every part, complete."""
        if self.buffer.tell() or self.parts == 0:
            self.cut(meta)
        while self._pending:
            self._finish_oldest()
        self.sink.complete(self.uploaded)

    def abort(self) -> None:
        """Stop the uploads in flight and abort the upload; never raises."""
        self._cancel()
        self.sink.abort()

    def _finish_oldest(self) -> None:
        future, meta = self._pending[0]
        # Wait in short slices: a run being canceled is interrupted in Python bytecode
        # (interrupt_main), which a bare result() on a slow or stuck upload would not reach.
        while not future.done():
            wait([future], timeout=WAIT_SLICE_SECONDS)
        part = future.result()
        self._pending.pop(0)
        self.uploaded.append(part)
        self.on_part(part, meta)

    def _cancel(self) -> None:
        for future, _ in self._pending:
            future.cancel()
        for future, _ in self._pending:
            with contextlib.suppress(BaseException):
                future.result()
        self._pending.clear()

    def __enter__(self) -> PartWriter[Meta]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            return
        if self.keep_on_error:
            self._cancel()
        else:
            self.abort()
