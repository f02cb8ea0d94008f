"""An export into a tenant's own destination, by the same streaming engine as ours.

`s3`: the engine as it is, with the tenant's client and bucket — multipart parts as they are
produced, checkpointed, a crashed export continuing at its next part; manifest, signature and
`_SUCCESS` last, as in ours. `sftp`: the engine's part writer over an SFTP sink that appends each
part to `<file>.partial` as it comes and renames the file when complete (file-level: a crashed
export writes its files again); then manifest, signature and `_SUCCESS`, each renamed into place.
`link` is not here: it is the service's own bucket.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from export_pipelines.core.delivery.destinations import azure_blob as azure_destination
from export_pipelines.core.delivery.destinations import gcs as gcs_destination
from export_pipelines.core.delivery.destinations import s3 as s3_destination
from export_pipelines.core.delivery.destinations import sftp as sftp_destination
from export_pipelines.core.delivery.destinations.config import Destination
from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import (
    build_manifest,
    clear_success_marker,
    delivered_in_place,
    finalize_export,
    manifest_bytes,
)
from export_pipelines.core.engine.plan import ExportPlan
from export_pipelines.core.engine.resume import abandon_open_uploads
from export_pipelines.core.engine.signing import SIGNATURE_SUFFIX, ManifestSigner
from export_pipelines.core.engine.upload import DEFAULT_PART_SIZE
from export_pipelines.core.errors import DestinationError, DestinationInvalid
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.core.results import ExportOutcome, ExportProgress, FinalizedExport
from export_pipelines.core.storage.s3 import UploadedPart


def export_to_destination(
    plan: ExportPlan,
    destination: Destination,
    *,
    conninfo: str,
    catalog: Catalog,
    signer: ManifestSigner | None,
    checkpoints: CheckpointStore | None = None,
    allow_private: bool = False,
    part_size: int = DEFAULT_PART_SIZE,
    max_parts_in_flight: int = 3,
    on_progress: Callable[[ExportProgress], None] | None = None,
    abort_on_error: bool = True,
    statement_timeout_seconds: float | None = None,
) -> ExportOutcome:
    """Write the planned export (whose prefix is the destination's) into the destination, manifest,
    signature and `_SUCCESS` included; raises DestinationError with the code the tenant reads when
    the destination fails us. `delivered(destination, plan, outcome)` says where the files lie."""
    if destination.kind == "s3":
        return _to_s3(
            plan,
            destination,
            conninfo=conninfo,
            catalog=catalog,
            signer=signer,
            checkpoints=checkpoints,
            allow_private=allow_private,
            part_size=part_size,
            max_parts_in_flight=max_parts_in_flight,
            on_progress=on_progress,
            abort_on_error=abort_on_error,
            statement_timeout_seconds=statement_timeout_seconds,
        )
    if destination.kind == "sftp":
        return _to_sftp(
            plan,
            destination,
            conninfo=conninfo,
            catalog=catalog,
            signer=signer,
            checkpoints=checkpoints,
            allow_private=allow_private,
            part_size=part_size,
            on_progress=on_progress,
            statement_timeout_seconds=statement_timeout_seconds,
        )
    if destination.kind == "azure_blob":
        return _to_azure(
            plan,
            destination,
            conninfo=conninfo,
            catalog=catalog,
            signer=signer,
            checkpoints=checkpoints,
            abort_on_error=abort_on_error,
            allow_private=allow_private,
            part_size=part_size,
            max_parts_in_flight=max_parts_in_flight,
            on_progress=on_progress,
            statement_timeout_seconds=statement_timeout_seconds,
        )
    if destination.kind == "gcs":
        return _to_gcs(
            plan,
            destination,
            conninfo=conninfo,
            catalog=catalog,
            signer=signer,
            checkpoints=checkpoints,
            abort_on_error=abort_on_error,
            allow_private=allow_private,
            part_size=part_size,
            max_parts_in_flight=max_parts_in_flight,
            on_progress=on_progress,
            statement_timeout_seconds=statement_timeout_seconds,
        )
    raise DestinationInvalid(f"kind: {destination.kind} has no writer in this version", "kind")


def _to_s3(
    plan: ExportPlan,
    destination: Destination,
    *,
    conninfo: str,
    catalog: Catalog,
    signer: ManifestSigner | None,
    checkpoints: CheckpointStore | None,
    allow_private: bool,
    part_size: int,
    max_parts_in_flight: int,
    on_progress: Callable[[ExportProgress], None] | None,
    abort_on_error: bool,
    statement_timeout_seconds: float | None,
) -> ExportOutcome:
    bucket = destination.config["bucket"]
    try:
        client = s3_destination.destination_client(destination, allow_private=allow_private)
        s3_destination.preflight(client, destination)
        clear_success_marker(client, bucket, plan.location)
        outcome = run_export(
            plan,
            conninfo=conninfo,
            catalog=catalog,
            s3_client=client,
            bucket=bucket,
            part_size=part_size,
            max_parts_in_flight=max_parts_in_flight,
            on_progress=on_progress,
            checkpoints=checkpoints,
            abort_on_error=abort_on_error,
            statement_timeout_seconds=statement_timeout_seconds,
        )
        finalize_export(client, bucket, plan, outcome, checkpoints, signer=signer, links=False)
        return outcome
    except DestinationError:
        raise
    except Exception as exc:
        if _is_storage_error(exc):
            raise s3_destination.s3_error(_storage_cause(exc), destination) from exc
        raise


def abandon(
    destination: Destination,
    plan: ExportPlan,
    checkpoints: CheckpointStore | None,
    *,
    allow_private: bool = False,
) -> None:
    """A failed export that will not be retried: abort its open multipart uploads in the tenant's
    bucket (with the credentials read when it started: a deleted destination's are wiped from the
    table by then). Never raises; SFTP writers remove their own partial files as they fail."""
    if destination.kind in ("azure_blob", "gcs", "sftp") and checkpoints is not None:
        # Staged blocks are never visible and expire by themselves; the checkpoint must not name them.
        with contextlib.suppress(Exception):
            checkpoints.drop_open_files(plan.location.folder)
    if destination.kind != "s3":
        return
    with contextlib.suppress(Exception):
        client = s3_destination.destination_client(destination, allow_private=allow_private, max_attempts=1)
        abandon_open_uploads(client, destination.config["bucket"], plan.location.folder, checkpoints)


def _storage_cause(exc: BaseException) -> BaseException:
    """The botocore error behind an engine error (S3ConfigurationError wraps the ClientError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__module__.startswith("botocore."):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _is_storage_error(exc: BaseException) -> bool:
    from export_pipelines.core.errors import S3ConfigurationError

    return isinstance(exc, S3ConfigurationError) or type(_storage_cause(exc)).__module__.startswith(
        "botocore."
    )


# -- sftp ------------------------------------------------------------------------------------------


class SftpSink:
    """One file on the SFTP server, in the shape of the engine's multipart sink: parts are appended
    to `<path>.partial` in order (the part writer uploads up to N at once; each waits for the one
    before it), and `complete` renames the file into place."""

    def __init__(self, client: Any, path: str) -> None:
        self.client, self.path = client, path
        self.key = path
        self.upload_token: str | None = None
        self.upload_id: str | None = None
        self._fh: Any = None
        self._next = 1
        self._turn = threading.Condition()
        self._failed: BaseException | None = None

    def start(self) -> str:
        self._fh = self.client.open(self.path + sftp_destination.PARTIAL_SUFFIX, "wb")
        self._fh.set_pipelined(True)
        self.upload_id = "sftp"
        return self.upload_id

    def upload_part(self, number: int, data: bytes) -> UploadedPart:
        with self._turn:
            while self._next != number and self._failed is None:
                self._turn.wait(timeout=0.5)
            if self._failed is not None:
                raise self._failed
            try:
                self._fh.write(data)
            except BaseException as exc:
                self._failed = exc
                self._turn.notify_all()
                raise
            self._next += 1
            self._turn.notify_all()
        return UploadedPart(number, "", "", len(data))

    def complete(self, parts: list[UploadedPart]) -> None:
        self._fh.close()
        self._fh = None
        self.client.posix_rename(self.path + sftp_destination.PARTIAL_SUFFIX, self.path)
        self.upload_id = None

    # What a checkpointed retry asks (file-level resume): complete files are kept, the open one is
    # written again from its start.
    def uploaded_etags(self) -> dict[int, set[str]] | None:
        return None  # parts are not addressable in a .partial file

    def completed_by_us(self, size: int | None = None) -> bool:
        found = sftp_destination.remote_size(self.client, self.path)
        return found is not None and (size is None or found == size)

    def read_sha256(self) -> str:
        import hashlib

        digest = hashlib.sha256()
        with self.client.open(self.path, "rb") as fh:
            fh.prefetch()
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def abort(self) -> None:
        """Leave nothing under the final name; the partial file is removed (never raises)."""
        with contextlib.suppress(Exception):
            if self._fh is not None:
                self._fh.close()
        with contextlib.suppress(Exception):
            self.client.remove(self.path + sftp_destination.PARTIAL_SUFFIX)
        self.upload_id = None


def _to_sftp(
    plan: ExportPlan,
    destination: Destination,
    *,
    conninfo: str,
    catalog: Catalog,
    signer: ManifestSigner | None,
    checkpoints: CheckpointStore | None,
    allow_private: bool,
    part_size: int,
    on_progress: Callable[[ExportProgress], None] | None,
    statement_timeout_seconds: float | None,
) -> ExportOutcome:
    base = destination.config["path"].rstrip("/")
    loc = plan.location
    try:
        with sftp_destination.connect(destination, allow_private=allow_private) as client:
            folder = sftp_destination.ensure_folder(client, base or "/", loc.folder)
            success = f"{folder}/{loc.success_key.rsplit('/', 1)[-1]}"
            with contextlib.suppress(FileNotFoundError):
                client.remove(success)  # never beside files being rewritten

            def sink_for(key: str, token: str | None = None) -> SftpSink:
                return SftpSink(client, f"{folder}/{key.rsplit('/', 1)[-1]}")

            outcome = run_export(
                plan,
                conninfo=conninfo,
                catalog=catalog,
                s3_client=None,
                bucket="",
                part_size=part_size,
                max_parts_in_flight=2,
                on_progress=on_progress,
                checkpoints=checkpoints,
                statement_timeout_seconds=statement_timeout_seconds,
                sink_factory=sink_for,
            )
            _finish_sftp(client, folder, plan, outcome, signer)
            if checkpoints is not None:
                checkpoints.forget(loc.folder)
    except DestinationError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError | EOFError) or type(exc).__module__.startswith("paramiko"):
            raise sftp_destination.sftp_error(exc, destination) from exc
        raise
    return outcome


def delivered(destination: Destination, plan: ExportPlan, outcome: ExportOutcome) -> FinalizedExport:
    """Where a delivered export's files lie, as URLs a tenant recognises (s3://bucket/key,
    sftp://host/path/key); nothing expires."""
    config = destination.config
    if destination.kind == "sftp":
        base = f"sftp://{config['host']}{config['path'].rstrip('/')}/"
    elif destination.kind == "azure_blob":
        base = f"{config['account_url'].rstrip('/')}/{config['container']}/"
    elif destination.kind == "gcs":
        base = f"gs://{config['bucket']}/"
    else:
        base = f"s3://{config['bucket']}/"
    return delivered_in_place(base, plan.location.manifest_key, outcome)


def _finish_sftp(
    client: Any, folder: str, plan: ExportPlan, outcome: ExportOutcome, signer: ManifestSigner | None
) -> None:
    """Manifest and signature, stale files of an earlier attempt removed, `_SUCCESS` last."""
    loc = plan.location
    body = manifest_bytes(build_manifest(plan, outcome, signer))
    manifest_name = loc.manifest_key.rsplit("/", 1)[-1]
    sftp_destination.put_bytes(client, f"{folder}/{manifest_name}", body)
    names = {f.key.rsplit("/", 1)[-1] for f in outcome.files} | {manifest_name}
    if signer is not None:
        sftp_destination.put_bytes(client, f"{folder}/{manifest_name}{SIGNATURE_SUFFIX}", signer.sign(body))
        names.add(manifest_name + SIGNATURE_SUFFIX)
    for name in client.listdir(folder):
        if name not in names:
            client.remove(f"{folder}/{name}")
    sftp_destination.put_bytes(client, f"{folder}/{loc.success_key.rsplit('/', 1)[-1]}", b"")


# -- azure_blob ------------------------------------------------------------------------------------


class AzureBlockSink:
    """One block blob, in the shape of the engine's multipart sink: each part is staged as a block
    (in parallel, like S3 parts); `complete` commits the block list in order, and only then does the
    blob exist under its name. Staged blocks outlive a crash (uncommitted, for 7 days), so with a
    checkpoint an export continues at its next part, as on S3: `uploaded_etags` reads the block
    list. `abort` leaves only uncommitted blocks, which the service discards."""

    TOKEN_META = "upload_token"

    def __init__(self, container: Any, name: str, content_type: str, token: str | None = None) -> None:
        self.blob = container.get_blob_client(name)
        self.key, self.content_type = name, content_type
        self.upload_token = token
        self.upload_id: str | None = None

    def start(self) -> str:
        self.upload_id = f"azure:{self.upload_token or ''}"
        return self.upload_id

    def upload_part(self, number: int, data: bytes) -> UploadedPart:
        block = azure_destination.block_id(number)
        self.blob.stage_block(block, data, length=len(data))
        return UploadedPart(number, block, "", len(data))

    def complete(self, parts: list[UploadedPart]) -> None:
        from azure.storage.blob import BlobBlock, ContentSettings

        ordered = sorted(parts, key=lambda p: p.number)
        self.blob.commit_block_list(
            [BlobBlock(block_id=p.etag) for p in ordered],
            content_settings=ContentSettings(content_type=self.content_type),
            metadata={self.TOKEN_META: self.upload_token or ""},
        )
        self.upload_id = None

    def uploaded_etags(self) -> dict[int, set[str]] | None:
        """The staged (uncommitted) blocks, by part number; None when there are none."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            _, uncommitted = self.blob.get_block_list("uncommitted")
        except ResourceNotFoundError:
            return None
        if not uncommitted:
            return None
        out: dict[int, set[str]] = {}
        for block in uncommitted:
            number = azure_destination.block_number(block.id)
            if number is not None:
                out.setdefault(number, set()).add(block.id)
        return out

    def completed_by_us(self, size: int | None = None) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self.blob.get_blob_properties()
        except ResourceNotFoundError:
            return False
        if not self.upload_token or (props.metadata or {}).get(self.TOKEN_META) != self.upload_token:
            return False
        return size is None or props.size == size

    def read_sha256(self) -> str:
        import hashlib

        digest = hashlib.sha256()
        for chunk in self.blob.download_blob().chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def abort(self) -> None:
        self.upload_id = None


def _to_azure(
    plan: ExportPlan,
    destination: Destination,
    *,
    conninfo: str,
    catalog: Catalog,
    signer: ManifestSigner | None,
    checkpoints: CheckpointStore | None,
    abort_on_error: bool,
    allow_private: bool,
    part_size: int,
    max_parts_in_flight: int,
    on_progress: Callable[[ExportProgress], None] | None,
    statement_timeout_seconds: float | None,
) -> ExportOutcome:
    from export_pipelines.core.formats import format_spec

    loc = plan.location
    spec = format_spec(plan.request.format)
    content_type = spec.content_types[plan.request.compression]
    try:
        container = azure_destination.container_client(destination, allow_private=allow_private)
        azure_destination.preflight(container)
        with contextlib.suppress(Exception):  # never beside files being rewritten
            container.get_blob_client(loc.success_key).delete_blob()
        outcome = run_export(
            plan,
            conninfo=conninfo,
            catalog=catalog,
            s3_client=None,
            bucket="",
            part_size=part_size,
            max_parts_in_flight=max_parts_in_flight,
            on_progress=on_progress,
            checkpoints=checkpoints,
            abort_on_error=abort_on_error,
            statement_timeout_seconds=statement_timeout_seconds,
            sink_factory=lambda key, token=None: AzureBlockSink(container, key, content_type, token),
        )
        body = manifest_bytes(build_manifest(plan, outcome, signer))
        names = {f.key for f in outcome.files} | {loc.manifest_key}
        container.upload_blob(loc.manifest_key, body, overwrite=True)
        if signer is not None:
            container.upload_blob(loc.manifest_key + SIGNATURE_SUFFIX, signer.sign(body), overwrite=True)
            names.add(loc.manifest_key + SIGNATURE_SUFFIX)
        for blob in container.list_blobs(name_starts_with=loc.folder):
            if blob.name not in names:
                container.delete_blob(blob.name)
        container.upload_blob(loc.success_key, b"", overwrite=True)
        if checkpoints is not None:
            checkpoints.forget(loc.folder)
    except DestinationError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("azure.") or isinstance(exc, OSError):
            raise azure_destination.azure_error(exc, destination) from exc
        raise
    return outcome


# -- gcs -------------------------------------------------------------------------------------------

GCS_PART_SUFFIX = ".export-part-"


class GcsComposeSink:
    """One GCS object, in the shape of the engine's multipart sink: each part is uploaded as a
    temporary object `<key>.export-part-NNNNN` (several at once); `complete` composes them in order
    (at most 32 sources a call, so in rounds for more) and deletes the temporaries. Until then nothing
    exists under the file's name. The temporaries survive a crash, so with a checkpoint the next
    attempt lists them and continues at its next part; `abort` deletes them."""

    TOKEN_META = "upload_token"

    def __init__(self, bucket: Any, key: str, content_type: str, token: str | None = None) -> None:
        self.bucket, self.key, self.content_type = bucket, key, content_type
        self.upload_token = token
        self.upload_id: str | None = None
        self._made: list[str] = []
        self._lock = threading.Lock()

    def _part_name(self, number: int) -> str:
        return f"{self.key}{GCS_PART_SUFFIX}{number:05d}"

    def start(self) -> str:
        self.upload_id = f"gcs:{self.upload_token or ''}"
        return self.upload_id

    def upload_part(self, number: int, data: bytes) -> UploadedPart:
        name = self._part_name(number)
        with self._lock:
            self._made.append(name)
        self.bucket.blob(name).upload_from_string(data, content_type="application/octet-stream", timeout=120)
        return UploadedPart(number, name, "", len(data))

    def uploaded_etags(self) -> dict[int, set[str]] | None:
        """The part objects an earlier attempt uploaded, by part number; None when there are none."""
        prefix = f"{self.key}{GCS_PART_SUFFIX}"
        out: dict[int, set[str]] = {}
        for blob in self.bucket.client.list_blobs(self.bucket, prefix=prefix):
            tail = blob.name[len(prefix) :]
            if tail.isdigit():
                out.setdefault(int(tail), set()).add(blob.name)
        return out or None

    def completed_by_us(self, size: int | None = None) -> bool:
        blob = self.bucket.get_blob(self.key, timeout=60)
        if blob is None or not self.upload_token:
            return False
        if (blob.metadata or {}).get(self.TOKEN_META) != self.upload_token:
            return False
        return size is None or blob.size == size

    def read_sha256(self) -> str:
        import hashlib

        digest = hashlib.sha256()
        with self.bucket.blob(self.key).open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def complete(self, parts: list[UploadedPart]) -> None:
        names = [p.etag for p in sorted(parts, key=lambda p: p.number)]
        with self._lock:
            self._made = list(dict.fromkeys([*self._made, *names]))  # an earlier attempt's parts too
        sources = [self.bucket.blob(name) for name in names]
        round_number = 0
        while len(sources) > gcs_destination.COMPOSE_MAX:
            round_number += 1
            merged = []
            for start in range(0, len(sources), gcs_destination.COMPOSE_MAX):
                name = f"{self.key}{GCS_PART_SUFFIX}r{round_number}-{start:05d}"
                with self._lock:
                    self._made.append(name)
                target = self.bucket.blob(name)
                target.compose(sources[start : start + gcs_destination.COMPOSE_MAX], timeout=120)
                merged.append(target)
            sources = merged
        final = self.bucket.blob(self.key)
        final.content_type = self.content_type
        final.metadata = {self.TOKEN_META: self.upload_token or ""}
        final.compose(sources, timeout=120)
        self._delete_temporaries()
        self.upload_id = None

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._delete_temporaries()
            for numbered in (self.uploaded_etags() or {}).values():
                for name in numbered:
                    self.bucket.blob(name).delete(timeout=60)
        self.upload_id = None

    def _delete_temporaries(self) -> None:
        with self._lock:
            made, self._made = self._made, []
        for name in made:
            with contextlib.suppress(Exception):
                self.bucket.blob(name).delete(timeout=60)


def _to_gcs(
    plan: ExportPlan,
    destination: Destination,
    *,
    conninfo: str,
    catalog: Catalog,
    signer: ManifestSigner | None,
    checkpoints: CheckpointStore | None,
    abort_on_error: bool,
    allow_private: bool,
    part_size: int,
    max_parts_in_flight: int,
    on_progress: Callable[[ExportProgress], None] | None,
    statement_timeout_seconds: float | None,
) -> ExportOutcome:
    from export_pipelines.core.formats import format_spec

    loc = plan.location
    content_type = format_spec(plan.request.format).content_types[plan.request.compression]
    try:
        bucket = gcs_destination.bucket_handle(destination, allow_private=allow_private)
        gcs_destination.preflight(bucket)
        with contextlib.suppress(Exception):  # never beside files being rewritten
            bucket.blob(loc.success_key).delete(timeout=60)
        outcome = run_export(
            plan,
            conninfo=conninfo,
            catalog=catalog,
            s3_client=None,
            bucket="",
            part_size=part_size,
            max_parts_in_flight=max_parts_in_flight,
            on_progress=on_progress,
            checkpoints=checkpoints,
            abort_on_error=abort_on_error,
            statement_timeout_seconds=statement_timeout_seconds,
            sink_factory=lambda key, token=None: GcsComposeSink(bucket, key, content_type, token),
        )
        body = manifest_bytes(build_manifest(plan, outcome, signer))
        names = {f.key for f in outcome.files} | {loc.manifest_key}
        bucket.blob(loc.manifest_key).upload_from_string(body, content_type="application/json", timeout=60)
        if signer is not None:
            bucket.blob(loc.manifest_key + SIGNATURE_SUFFIX).upload_from_string(signer.sign(body), timeout=60)
            names.add(loc.manifest_key + SIGNATURE_SUFFIX)
        for blob in bucket.client.list_blobs(bucket, prefix=loc.folder):
            if blob.name not in names:
                blob.delete(timeout=60)
        bucket.blob(loc.success_key).upload_from_string(b"", timeout=60)
        if checkpoints is not None:
            checkpoints.forget(loc.folder)
    except DestinationError:
        raise
    except Exception as exc:
        module = type(exc).__module__
        if module.startswith(("google.", "requests", "urllib3")) or isinstance(exc, OSError):
            raise gcs_destination.gcs_error(exc, destination) from exc
        raise
    return outcome
