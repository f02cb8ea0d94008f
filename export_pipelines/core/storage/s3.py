"""S3 side of an export: the client, `MultipartSink` (one object = one multipart upload), errors.

Transient failures (throttling, 5xx, timeouts, resets) are retried by botocore's `standard`
retry mode, set explicitly. Configuration failures (no bucket, bad keys, access denied) are
raised at once as `S3ConfigurationError` with a message a person can act on.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from export_pipelines.core.errors import Rejected, S3ConfigurationError
from export_pipelines.core.storage.layout import ExportLocation, is_export_folder

_CONFIG_ERRORS = {
    "NoSuchBucket": "the bucket does not exist (check EXPORT_BUCKET)",
    "AccessDenied": "access denied (check the credentials' permissions on the bucket)",
    "InvalidAccessKeyId": "the access key is not known to the server (check AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "the secret key is wrong (check AWS_SECRET_ACCESS_KEY)",
    "InvalidBucketName": "the bucket name is invalid (check EXPORT_BUCKET)",
}


UPLOAD_TOKEN_META = "upload-token"


def explain(exc: ClientError, bucket: str, key: str | None = None) -> Exception:
    """Turn a ClientError into S3ConfigurationError when it is a configuration problem."""
    code = _code(exc)
    if code in _CONFIG_ERRORS:
        where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
        return S3ConfigurationError(f"S3 {code} for {where}: {_CONFIG_ERRORS[code]}")
    return exc


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    max_attempts: int = 6,
    max_pool_connections: int = 16,
    read_timeout: float = 120,
    connect_timeout: float = 10,
) -> Any:
    """A boto3 S3 client that signs SigV4 (presigned URLs included) and retries transient errors.

    Reads no environment variable itself (the caller's settings pass them); with no keys given,
    boto3's own credential chain applies."""
    config = Config(
        signature_version="s3v4",
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        # Path-style works on every S3-compatible server; AWS accepts it too.
        s3={"addressing_style": "path"},
        # We send our own SHA-256 per part; don't make botocore compute a second checksum.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region_name or "us-east-1",
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        aws_session_token=aws_session_token,
        config=config,
    )


@dataclass(frozen=True)
class UploadedPart:
    number: int
    etag: str
    checksum_sha256: str  # base64, as S3 reports it
    size: int


class MultipartSink:
    """One S3 object written as a multipart upload; `abort()` leaves no parts behind."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        content_type: str,
        metadata: dict[str, str],
        content_disposition: str | None = None,
        upload_token: str | None = None,
        upload_id: str | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.content_type = content_type
        # The token is stored in the object's metadata: after a crash (or an ambiguous
        # CompleteMultipartUpload), finding it on the object proves *this* upload completed.
        self.upload_token = upload_token
        self.metadata = {**metadata, **({UPLOAD_TOKEN_META: upload_token} if upload_token else {})}
        self.content_disposition = content_disposition
        self.upload_id: str | None = upload_id  # given: continue an upload a crashed run began

    def start(self) -> str:
        extra: dict[str, Any] = {}
        if self.content_disposition:
            extra["ContentDisposition"] = self.content_disposition
        try:
            resp = self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                ContentType=self.content_type,
                Metadata=self.metadata,
                ServerSideEncryption="AES256",
                ChecksumAlgorithm="SHA256",
                **extra,
            )
        except ClientError as exc:
            raise explain(exc, self.bucket, self.key) from exc
        self.upload_id = resp["UploadId"]
        return resp["UploadId"]

    def upload_part(self, number: int, data: bytes) -> UploadedPart:
        if self.upload_id is None:
            raise RuntimeError("start() the upload first")
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        try:
            resp = self.client.upload_part(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )
        except ClientError as exc:
            raise explain(exc, self.bucket, self.key) from exc
        return UploadedPart(number, resp["ETag"], checksum, len(data))

    def complete(self, parts: list[UploadedPart]) -> None:
        if self.upload_id is None:
            raise RuntimeError("start() the upload first")
        ordered = sorted(parts, key=lambda p: p.number)
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={
                    "Parts": [
                        {"PartNumber": p.number, "ETag": p.etag, "ChecksumSHA256": p.checksum_sha256}
                        for p in ordered
                    ]
                },
            )
        except ClientError as exc:
            # A retried Complete whose first attempt the server applied (the connection dropped
            # before the answer) finds no upload: the object carrying our token is the proof.
            if _code(exc) != "NoSuchUpload" or not self.completed_by_us(sum(p.size for p in ordered)):
                raise explain(exc, self.bucket, self.key) from exc
        self.upload_id = None

    def completed_by_us(self, size: int | None = None) -> bool:
        """Whether the object exists, carries this upload's token (and has `size` bytes)."""
        if not self.upload_token:
            return False
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise explain(exc, self.bucket, self.key) from exc
        if head.get("Metadata", {}).get(UPLOAD_TOKEN_META) != self.upload_token:
            return False
        return size is None or head.get("ContentLength") == size

    def uploaded_etags(self) -> dict[int, set[str]] | None:
        """ETags S3 holds for each part of the open upload; None if the upload is gone.

        A part uploaded twice may be listed twice (SeaweedFS keeps both entries), so each part
        number maps to every ETag seen for it.
        """
        if self.upload_id is None:
            return None
        out: dict[int, set[str]] = {}
        try:
            paginator = self.client.get_paginator("list_parts")
            for page in paginator.paginate(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id):
                for part in page.get("Parts", []):
                    out.setdefault(int(part["PartNumber"]), set()).add(part["ETag"])
        except ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                return None
            raise explain(exc, self.bucket, self.key) from exc
        return out

    def abort(self) -> None:
        """Abort the upload if one is open; never raises (it runs while handling another error)."""
        if self.upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            self.upload_id = None
        except Exception:  # noqa: BLE001 - the original error matters more; the janitor retries
            pass


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def abort_uploads(
    client: Any,
    bucket: str,
    prefix: str,
    keep: frozenset[str] = frozenset(),
    initiated_before: datetime | None = None,
) -> int:
    """Abort the open uploads under `prefix` (except the ids in `keep`, and only those begun
    before `initiated_before` if given); returns how many. One already gone is not an error."""
    aborted = 0
    for upload in open_uploads(client, bucket, prefix):
        if upload["UploadId"] in keep or (initiated_before and upload["Initiated"] >= initiated_before):
            continue
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":
                raise explain(exc, bucket, upload["Key"]) from exc
    return aborted


def open_uploads(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Multipart uploads still open under `prefix` (what a failed export must not leave)."""
    out: list[dict[str, Any]] = []
    paginator = client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        out.extend(page.get("Uploads", []))
    return out


DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys


def delete_prefix(client: Any, bucket: str, prefix: str, keep: frozenset[str] = frozenset()) -> int:
    """Delete every object under `prefix` except the keys in `keep`; returns how many. The keys are
    listed first, then deleted in batches of 1,000.

    `prefix` must be one export's folder (…/tenant=<t>/<resource>/<export id>/, as
    `ExportLocation.folder` makes it): a shorter one (a tenant, the exports prefix, the bucket)
    is refused, whoever computed it."""
    if not prefix.endswith("/"):
        raise ValueError("prefix must end with '/' so it cannot match a sibling prefix")
    if not is_export_folder(prefix):
        raise Rejected(
            f"prefix: {prefix[:200]!r} is not an export folder; allowed: "
            "<EXPORT_PREFIX>/tenant=<tenant>/<resource>/<export id>/ (ExportLocation.folder)",
            "prefix",
        )
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
        if obj["Key"] not in keep
    ]
    for start in range(0, len(keys), DELETE_BATCH):
        batch = keys[start : start + DELETE_BATCH]
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
    return len(keys)


def delete_export(
    client: Any, bucket: str, location: ExportLocation, keep: frozenset[str] = frozenset()
) -> int:
    """Delete one export's objects (all but `keep`), the folder derived from its location."""
    return delete_prefix(client, bucket, location.folder, keep)


def object_sha256(client: Any, bucket: str, key: str) -> str:
    """SHA-256 of an object's bytes, streamed (a continued file's hash spans two attempts)."""
    digest = hashlib.sha256()
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        raise explain(exc, bucket, key) from exc
    for chunk in iter(lambda: body.read(8 * 1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()
