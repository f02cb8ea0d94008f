"""The export run's steps into a tenant's destination (its own bucket, container or SFTP server):
looking the destination up, and writing the export, its signed manifest and `_SUCCESS` into it.
Credentials are decrypted here only, never put in run config or logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import dagster as dg

from export_pipelines.core.delivery.destinations.config import Destination
from export_pipelines.core.delivery.destinations.destination_store import DestinationStore
from export_pipelines.core.engine.destination_export import abandon, export_to_destination
from export_pipelines.core.errors import DestinationError, DestinationNotFound
from export_pipelines.core.results import ExportOutcome, ExportProgress
from export_pipelines.orchestration.op_failures import explained_on_last_attempt, failure, is_last_attempt
from export_pipelines.orchestration.resources import ExportSettings, SourceDatabase

if TYPE_CHECKING:  # ops.py imports this module; RunPlan is only an annotation here
    from export_pipelines.orchestration.ops import RunPlan


def find_destination(source: SourceDatabase, destination_id: str, tenant_id: str) -> Destination | None:
    """The tenant's destination (None: there is none by that id, or it was deleted)."""
    with DestinationStore(source.conninfo) as store:
        return store.get(destination_id, tenant_id)


# How often a running export into a destination checks the destination still exists.
DESTINATION_CHECK_SECONDS = 5.0


def export_into_destination(
    context: dg.OpExecutionContext,
    run_plan: RunPlan,
    source: SourceDatabase,
    export_settings: ExportSettings,
    on_progress: Callable[[ExportProgress], None],
) -> ExportOutcome:
    """Write the export, its signed manifest and `_SUCCESS` into the tenant's destination. The
    destination is read (credentials decrypted) here, never put in run config or logs; one deleted
    meanwhile stops the export at its next part, its upload aborted, as destination_not_found."""
    plan, destination_id = run_plan.plan, run_plan.destination_id or ""
    tenant = plan.request.tenant_id
    box = export_settings.secret_box()
    checked = [time.monotonic()]

    def still_there(p: ExportProgress) -> None:
        on_progress(p)
        if time.monotonic() - checked[0] >= DESTINATION_CHECK_SECONDS:
            checked[0] = time.monotonic()
            if find_destination(source, destination_id, tenant) is None:
                raise DestinationNotFound(f"destination_id: {destination_id} was deleted during the export")

    try:
        with DestinationStore(source.conninfo) as store:
            destination = store.for_writer(box, destination_id, tenant)
    except DestinationError as exc:
        raise failure(exc, str(exc)) from exc
    context.log.info(f"delivering into destination {destination.id} ({destination.kind}, {destination.name})")
    # Part-level resume where the destination keeps parts across a crash (S3 uploads, Azure blocks,
    # GCS part objects); file-level on SFTP (complete files are kept, the open one is written again).
    checkpoints = source.checkpoints()
    try:
        with explained_on_last_attempt(context):
            outcome = export_to_destination(
                plan,
                destination,
                conninfo=source.conninfo,
                catalog=export_settings.catalog(),
                signer=export_settings.signer(),
                checkpoints=checkpoints,
                allow_private=export_settings.destinations_allow_private,
                part_size=export_settings.part_size_mib * 1024 * 1024,
                max_parts_in_flight=export_settings.max_parts_in_flight,
                on_progress=still_there,
                abort_on_error=is_last_attempt(context),
                statement_timeout_seconds=export_settings.statement_timeout_seconds,
            )
    except DestinationError as exc:
        # The tenant's storage refused or is gone: retrying cannot help, so nothing stays open for a
        # retry; the row says which code.
        abandon(destination, plan, checkpoints, allow_private=export_settings.destinations_allow_private)
        raise failure(exc, str(exc)) from exc
    context.log.info(
        f"delivered {outcome.rows} rows in {len(outcome.files)} file(s) to destination {destination_id}"
    )
    return outcome
