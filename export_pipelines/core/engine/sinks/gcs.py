"""The `gcs` writer: the engine with a compose sink per file (parts uploaded as temporary objects,
composed in order), then manifest, signature, stale objects removed, and `_SUCCESS`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from export_pipelines.core.delivery.destinations import gcs as gcs_destination
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


def to_gcs(
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
