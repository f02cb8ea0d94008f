"""Reference uploader: stream stdin into one S3 object with boto3's multipart upload_fileobj.

Used by the reference methods of bench/run.py so that they pay for S3 exactly like ours:
`psql \\copy ... | gzip -1 | python bench/upload_stdin.py BUCKET KEY`.
"""

from __future__ import annotations

import sys

from boto3.s3.transfer import TransferConfig

from export_pipelines.core.storage.s3 import make_s3_client
from export_pipelines.settings import Settings


def main() -> None:
    bucket, key = sys.argv[1], sys.argv[2]
    config = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=3)
    make_s3_client(**Settings.from_env().s3_client_options()).upload_fileobj(
        sys.stdin.buffer, bucket, key, Config=config
    )


if __name__ == "__main__":
    main()
