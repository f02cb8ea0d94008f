"""The `sftp` writer: the engine's part writer over an SFTP sink that appends each part to
`<file>.partial` as it comes and renames the file when complete (file-level: a crashed export
writes its files again); then manifest, signature and `_SUCCESS`, each renamed into place."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from export_pipelines.core.delivery.destinations import sftp as sftp_destination
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


def to_sftp(
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
