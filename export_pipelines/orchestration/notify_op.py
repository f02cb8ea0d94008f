# No `from __future__ import annotations` here: Dagster reads these annotations at runtime.
"""The export graph's last op: mark the request row succeeded, then record the notifications
(webhook, email) for the delivery sensor. It never sends: a receiver that hangs must not hold the
run's slot (issue 12, finding 16)."""

from typing import Any

import dagster as dg

from export_pipelines.core.delivery.drain import (
    SUCCEEDED,
    download_url,
    enqueue_notification,
    ready_email_body,
    webhook_payload,
)
from export_pipelines.core.engine.manifest import FinalizedExport
from export_pipelines.core.requests.request_row import is_request_id
from export_pipelines.orchestration.ops import RunPlan
from export_pipelines.orchestration.resources import SourceDatabase


@dg.op(tags={"kind": "notify"})
def notify(
    context: dg.OpExecutionContext,
    run_plan: RunPlan,
    done: FinalizedExport,
    source: SourceDatabase,
) -> FinalizedExport:
    """Mark the request row succeeded, then queue webhook and email. Failures here are logged only."""
    record_success(context.log, source, run_plan, done)
    return done


def record_success(log: Any, source: SourceDatabase, run_plan: RunPlan, done: FinalizedExport) -> None:
    """What `notify` does, also called per tenant by the monthly batch (monthly_export.py)."""
    req = run_plan.plan.request
    if run_plan.request_id:
        source.requests().mark_succeeded(
            run_plan.request_id,
            rows=done.rows,
            bytes_written=done.bytes,
            manifest_key=done.manifest_key,
            download_url=download_url(done),
            expires_at=done.expires_at,
        )
    if run_plan.webhook_url or run_plan.email:
        payload = webhook_payload(
            SUCCEEDED,
            # The id the API knows the export by (a monthly row's id, not its month).
            export_id=run_plan.request_id or req.export_id,
            tenant_id=req.tenant_id,
            resource=req.resource,
            rows=done.rows,
            bytes_written=done.bytes,
            done=done,
        )
        try:
            enqueue_notification(
                source.deliveries(),
                # An ad-hoc run's request_id may be any text: only a row id goes in the uuid column.
                request_id=run_plan.request_id if is_request_id(run_plan.request_id or "") else None,
                tenant_id=req.tenant_id,
                event=SUCCEEDED,
                payload=payload,
                webhook_url=run_plan.webhook_url,
                email=run_plan.email,
                email_subject=f"Your {req.resource} export is ready",
                email_body=ready_email_body(req.resource, done),
            )
        except Exception as exc:  # noqa: BLE001 - a notification never fails the export
            log.warning(f"notification not queued: {type(exc).__name__}: {exc}")
        else:
            log.info("notification queued for the delivery sensor")
    log.info(f"export ready: {done.rows} rows in {len(done.files)} file(s); manifest {done.manifest_key}")
