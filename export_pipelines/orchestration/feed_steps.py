"""The export run's part in a feed's deliveries: the window a delivery row exports (from the feed's
last succeeded delivery), and what a finished delivery records for the next one, with the
export.schema_changed notice when its columns or types moved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from export_pipelines.core.delivery import notices
from export_pipelines.core.engine.feed_delivery import (
    DeliveryRecord,
    delivery_record,
    next_window,
    schema_changes,
)
from export_pipelines.core.requests.feed_deliveries import FeedDeliveries
from export_pipelines.core.requests.feed_store import FeedStore
from export_pipelines.core.requests.request import FeedWindow
from export_pipelines.core.results import ExportOutcome, FinalizedExport
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.resources import SourceDatabase

if TYPE_CHECKING:  # ops.py imports this module; RunPlan is only an annotation here
    from export_pipelines.orchestration.ops import RunPlan


def feed_deliveries(source: SourceDatabase) -> FeedDeliveries:
    """The feed deliveries of export_requests, lent the requests store's connection: already open,
    migrated and the tenant cap written, as when these were RequestStore's methods."""
    return FeedDeliveries.on(source.requests().conn)


def feed_window(source: SourceDatabase, request_id: str) -> FeedWindow | None:
    """The window of the feed delivery this row is (None: not a feed's delivery): from the feed's
    last succeeded delivery, whatever happened to the ones in between; full when that delivery went
    to another destination (or to our bucket) than this one goes to."""
    row = source.requests().get(request_id)
    if row is None or row.feed_id is None or row.sequence is None:
        return None
    previous = feed_deliveries(source).previous_delivery(row.feed_id, row.sequence)
    with FeedStore(source.conninfo) as feeds:
        feed = feeds.get(None, row.feed_id)
    here = str(row.destination_id) if row.destination_id else None
    return next_window(
        row.feed_id,
        row.sequence,
        feed.mode if feed else "incremental",
        DeliveryRecord.from_json(previous) if previous else None,
        full_refresh=row.feed_full_refresh,
        destination_changed=previous is not None and previous.get("destination_id") != here,
    )


def record_feed_delivery(
    context: dg.OpExecutionContext,
    run_plan: RunPlan,
    outcome: ExportOutcome,
    done: FinalizedExport,
    source: SourceDatabase,
) -> None:
    """What the feed's next delivery starts from (on the row, before it is marked succeeded), the
    snapshot on the run's tags, and export.schema_changed when the columns or types moved."""
    plan = run_plan.plan
    record = delivery_record(plan, outcome, done.manifest_key)
    if run_plan.request_id:
        feed_deliveries(source).record_delivery(run_plan.request_id, record.as_json())
    context.instance.add_run_tags(context.run_id, {tags.FEED_SNAPSHOT: record.snapshot})
    context.log.info(
        f"delivery {record.sequence}: {record.upserts} upserts, {record.deletes} deletes, "
        f"snapshot {record.snapshot}"
    )
    changes = schema_changes(plan)
    if changes is not None:
        req = plan.request
        notice = notices.schema_changed(
            export_id=req.export_id, tenant_id=req.tenant_id, resource=req.resource, changes=changes
        )
        notices.enqueue(
            source.deliveries(),
            notice,
            request_id=run_plan.request_id,
            tenant_id=req.tenant_id,
            webhook_url=run_plan.webhook_url,
            email=run_plan.email,
        )
