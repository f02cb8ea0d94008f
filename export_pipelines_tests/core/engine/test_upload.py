"""PartWriter against the local S3: parts reported in order, complete, and abort on error
unless the upload is kept for a retry."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from export_pipelines.core.engine.upload import MIN_PART_SIZE, PartWriter, part_size_for
from export_pipelines.core.storage.s3 import MultipartSink, UploadedPart, open_uploads


def _writer(
    s3_client: Any, bucket: str, key: str, pool: ThreadPoolExecutor, seen: list[Any], **kw: Any
) -> PartWriter[Any]:
    sink = MultipartSink(s3_client, bucket, key, content_type="application/octet-stream", metadata={})
    sink.start()

    def on_part(part: UploadedPart, meta: Any) -> None:
        seen.append((part.number, meta))

    return PartWriter(sink, pool, part_size=MIN_PART_SIZE, max_in_flight=2, on_part=on_part, **kw)


def test_part_sizes_grow_every_thousand_parts():
    assert part_size_for(1, 1) == MIN_PART_SIZE
    assert part_size_for(1_000, 8 << 20) == 8 << 20
    assert part_size_for(1_001, 8 << 20) == 16 << 20


def test_parts_are_reported_in_order_and_completed(s3_client, bucket, prefix):
    seen: list[Any] = []
    key = f"{prefix}/whole.bin"
    with ThreadPoolExecutor(2) as pool, _writer(s3_client, bucket, key, pool, seen) as writer:
        for n in range(3):
            writer.write(bytes([n]) * MIN_PART_SIZE)
            assert writer.part_full
            writer.cut(f"meta-{n}")
        writer.write(b"tail")
        writer.complete("meta-last")
    assert seen == [(1, "meta-0"), (2, "meta-1"), (3, "meta-2"), (4, "meta-last")]
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert len(body) == writer.bytes == 3 * MIN_PART_SIZE + 4 and writer.parts == 4
    assert writer.sha256 == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("keep_on_error", [False, True])
def test_an_error_in_the_block_aborts_unless_kept(s3_client, bucket, prefix, keep_on_error):
    seen: list[Any] = []
    key = f"{prefix}/x.bin"
    with (
        ThreadPoolExecutor(2) as pool,
        pytest.raises(RuntimeError, match="boom"),
        _writer(s3_client, bucket, key, pool, seen, keep_on_error=keep_on_error) as writer,
    ):
        writer.write(b"a" * MIN_PART_SIZE)
        writer.cut(None)
        raise RuntimeError("boom")
    uploads = open_uploads(s3_client, bucket, prefix)
    assert len(uploads) == (1 if keep_on_error else 0)
    if keep_on_error:  # left for a retry to continue; this test cleans it up
        s3_client.abort_multipart_upload(
            Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
        )
