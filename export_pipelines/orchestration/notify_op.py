# No `from __future__ import annotations` here: Dagster reads these annotations at runtime.
"""The export graph's last op: mark the request row succeeded, then notify (webhook, email)."""

import dagster as dg

from export_pipelines.core.delivery import SUCCEEDED, deliver, download_url, ready_email_body, webhook_payload
from export_pipelines.core.manifest import FinalizedExport
from export_pipelines.orchestration.ops import RunPlan
from export_pipelines.orchestration.resources import Notifier, SourceDatabase


@dg.op(tags={"kind": "notify"})
def notify(
    context: dg.OpExecutionContext,
    run_plan: RunPlan,
    done: FinalizedExport,
    source: SourceDatabase,
    notifier: Notifier,
) -> FinalizedExport:
    """Mark the request row succeeded, then webhook and email. Failures here are recorded only."""
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
    payload = webhook_payload(
        SUCCEEDED,
        export_id=req.export_id,
        tenant_id=req.tenant_id,
        resource=req.resource,
        rows=done.rows,
        bytes_written=done.bytes,
        done=done,
    )
    problem = deliver(
        context.log,
        notifier.channels(),
        payload,
        run_plan.webhook_url,
        run_plan.email,
        f"Your {req.resource} export is ready",
        ready_email_body(req.resource, done),
    )
    if run_plan.request_id and (run_plan.webhook_url or run_plan.email):
        source.requests().record_notification(run_plan.request_id, problem)
    context.log.info(
        f"export ready: {done.rows} rows in {len(done.files)} file(s); manifest {done.manifest_key}"
    )
    return done
