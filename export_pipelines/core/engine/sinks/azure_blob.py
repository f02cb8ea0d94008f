"""The `azure_blob` writer: the engine with a block-blob sink per file (parts staged as blocks,
committed in order), then manifest, signature, stale blobs removed, and `_SUCCESS`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from export_pipelines.core.delivery.destinations import azure_blob as azure_destination
from export_pipelines.core.delivery.destinations.config import Destination
from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import build_manifest, manifest_bytes
from export_pipelines.core.engine.plan import ExportPlan
from export_pipelines.core.engine.signing import ManifestSigner
from export_pipelines.core.errors import DestinationError
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.core.results import ExportOutcome, ExportProgress
from export_pipelines.core.storage.layout import SIGNATURE_SUFFIX
from export_pipelines.core.storage.s3 import UploadedPart


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


def to_azure(
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
