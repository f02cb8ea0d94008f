# No `from __future__ import annotations` here: Dagster reads these annotations at runtime.
"""An export's outcome on its row and to its requester: the export graph's last op (row succeeded,
then the notifications recorded for the delivery sensor), the notices of a row that ended without
files (failed, canceled), and aborting a dead export's open uploads. Nothing here sends: a receiver
that hangs must not hold the run's slot, nor a sensor's tick (docs/architecture.md)."""

from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg

from export_pipelines.core.delivery import notices
from export_pipelines.core.engine.resume import abandon_open_uploads
from export_pipelines.core.requests.request_row import StoredRequest, is_request_id
from export_pipelines.core.requests.tenant_settings import targets as tenant_targets
from export_pipelines.core.results import FinalizedExport
from export_pipelines.orchestration.exports_asset import asset_output
from export_pipelines.orchestration.op_failures import canceled_failure
from export_pipelines.orchestration.ops import RunPlan
from export_pipelines.orchestration.resources import ExportS3, ExportSettings, SourceDatabase
from export_pipelines.orchestration.run_page import download_links, result_tags


def build_notify_op(resources: Sequence[str]) -> dg.OpDefinition:
    """The export graph's last op, with one optional output per catalog resource: the output of
    the export's resource is the materialization of its asset `exports/<resource>`, made once the
    export is committed."""

    @dg.op(
        name="notify",
        tags={"kind": "notify"},
        out={asset_output(r): dg.Out(dg.Nothing, is_required=False) for r in resources},
    )
    def notify(
        context: dg.OpExecutionContext,
        run_plan: RunPlan,
        done: FinalizedExport,
        source: SourceDatabase,
    ) -> Iterator[dg.Output]:
        """Mark the request row succeeded, then queue webhook and email. The commit point of an export:
        the row becomes `succeeded` only if it is still running, in one statement, so a cancel that
        came first wins (the run fails as canceled; nobody is told of a success)."""
        if not record_success(context.log, source, run_plan, done):
            raise canceled_failure(run_plan.request_id or "")
        # Committed: the summary and the link go to the top of the run's page.
        context.instance.add_run_tags(context.run_id, result_tags(done))
        if run_plan.destination_id is None:  # files in our bucket, with links (not a tenant's storage)
            yield dg.Output(
                None,
                output_name=asset_output(run_plan.plan.request.resource),
                metadata=download_links(run_plan.plan, done),
            )

    return notify


def record_success(log: Any, source: SourceDatabase, run_plan: RunPlan, done: FinalizedExport) -> bool:
    """What `notify` does, also called per tenant by the monthly batch (monthly_export.py). False
    (and nothing recorded) when the row was canceled before it could become succeeded."""
    req = run_plan.plan.request
    if run_plan.request_id:
        marked = source.requests().mark_succeeded(
            run_plan.request_id,
            rows=done.rows,
            bytes_written=done.bytes,
            manifest_key=done.manifest_key,
            download_url=done.download_url,
            expires_at=done.expires_at,
        )
        if not marked and source.requests().is_canceled(run_plan.request_id):
            log.warning(f"request {run_plan.request_id} was canceled: the export is not committed")
            return False
    if run_plan.webhook_url or run_plan.email:
        notice = notices.succeeded(
            # The id the API knows the export by (a monthly row's id, not its month).
            export_id=run_plan.request_id or req.export_id,
            tenant_id=req.tenant_id,
            resource=req.resource,
            done=done,
        )
        try:
            notices.enqueue(
                source.deliveries(),
                notice,
                # An ad-hoc run's request_id may be any text: only a row id goes in the uuid column.
                request_id=run_plan.request_id if is_request_id(run_plan.request_id or "") else None,
                tenant_id=req.tenant_id,
                webhook_url=run_plan.webhook_url,
                email=run_plan.email,
            )
        except Exception as exc:  # noqa: BLE001 - a notification never fails the export
            log.warning(f"notification not queued: {type(exc).__name__}: {exc}")
        else:
            log.info("notification queued for the delivery sensor")
    log.info(f"export ready: {done.rows} rows in {len(done.files)} file(s); manifest {done.manifest_key}")
    return True


def notify_row(
    source: SourceDatabase, log: Any, row: StoredRequest, event: str, error: str, code: str | None = None
) -> None:
    """Record the notifications of a row that ended without files (failed, canceled), with the code
    the row got; the delivery sensor sends them, so a slow receiver never holds this sensor. Never
    raises."""
    webhook_url, email = tenant_targets(source.conninfo, row.tenant_id, row.webhook_url, row.email)
    if not (webhook_url or email):
        return
    try:
        notice = notices.ended(
            event,
            export_id=row.id,
            tenant_id=row.tenant_id,
            resource=row.resource,
            rows=row.rows_exported,
            bytes_written=row.bytes_written,
            error=error,
            error_code=code,
        )
        notices.enqueue(
            source.deliveries(),
            notice,
            request_id=row.id,
            tenant_id=row.tenant_id,
            webhook_url=webhook_url,
            email=email,
        )
    except Exception as exc:  # noqa: BLE001 - a notification never undoes the row's new state
        log.warning(f"notification for request {row.id} not sent: {type(exc).__name__}: {exc}")


def abort_uploads_logged(
    s3: ExportS3, export_settings: ExportSettings, source: SourceDatabase, folder: str, log: Any
) -> None:
    try:
        aborted = abandon_open_uploads(s3.get_client(), export_settings.bucket, folder, source.checkpoints())
    except Exception as exc:  # noqa: BLE001 - S3 down or a wrong key: the janitor aborts them later
        log.warning(f"could not abort the open uploads under {folder}: {type(exc).__name__}: {exc}")
        return
    if aborted:
        log.info(f"aborted {aborted} open upload(s) under {folder}")
