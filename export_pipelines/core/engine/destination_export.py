"""An export into a tenant's own destination, by the same streaming engine as ours.

This module picks the writer for the destination's kind (core/engine/sinks/: `s3`, `sftp`,
`azure_blob`, `gcs`), abandons a failed export's open uploads, and says where a delivered export's
files lie. `link` is not here: it is the service's own bucket.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from export_pipelines.core.delivery.destinations import s3 as s3_destination
from export_pipelines.core.delivery.destinations.config import Destination
from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.manifest import delivered_in_place
from export_pipelines.core.engine.plan import ExportPlan
from export_pipelines.core.engine.resume import abandon_open_uploads
from export_pipelines.core.engine.signing import ManifestSigner
from export_pipelines.core.engine.sinks.azure_blob import to_azure
from export_pipelines.core.engine.sinks.gcs import to_gcs
from export_pipelines.core.engine.sinks.s3 import to_s3
from export_pipelines.core.engine.sinks.sftp import to_sftp
from export_pipelines.core.engine.upload import DEFAULT_PART_SIZE
from export_pipelines.core.errors import DestinationInvalid
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.core.results import ExportOutcome, ExportProgress, FinalizedExport

# The writer of each kind: the same engine, a sink per kind (core/engine/sinks/).
WRITERS: dict[str, Callable[..., ExportOutcome]] = {
    "s3": to_s3,
    "sftp": to_sftp,
    "azure_blob": to_azure,
    "gcs": to_gcs,
}


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
    writer = WRITERS.get(destination.kind)
    if writer is None:
        raise DestinationInvalid(f"kind: {destination.kind} has no writer in this version", "kind")
    options: dict[str, Any] = {
        "conninfo": conninfo,
        "catalog": catalog,
        "signer": signer,
        "checkpoints": checkpoints,
        "allow_private": allow_private,
        "part_size": part_size,
        "on_progress": on_progress,
        "statement_timeout_seconds": statement_timeout_seconds,
    }
    if destination.kind != "sftp":
        # SFTP writes one file at a time and removes its own partial file as it fails.
        options |= {"max_parts_in_flight": max_parts_in_flight, "abort_on_error": abort_on_error}
    return writer(plan, destination, **options)


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
