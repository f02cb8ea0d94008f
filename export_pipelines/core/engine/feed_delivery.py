"""A feed's delivery, end to end, in plain Python: the window it covers, then the ordinary export
engine (plan, stream, finalize) on the feed's change relation (docs/feeds.md).

The Dagster ops run the same three steps (orchestration/ops.py, orchestration/feed_steps.py);
tests and the cost bench call `deliver` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import (
    build_manifest,
    clear_success_marker,
    delivery_snapshot,
    finalize_export,
)
from export_pipelines.core.engine.plan import ExportPlan, plan_export, schema_hash, schema_of
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.core.requests.request import ExportRequest, FeedWindow
from export_pipelines.core.results import ExportOutcome, FinalizedExport


@dataclass(frozen=True)
class DeliveryRecord:
    """What the next delivery needs of a succeeded one (stored on its export_requests row)."""

    sequence: int
    snapshot: str
    manifest_key: str | None
    schema: tuple[tuple[str, str], ...]
    schema_hash: str
    mode: str = "incremental"
    upserts: int = 0
    deletes: int = 0
    tracking_id: int | None = None  # the table's tracking when this delivery was made

    def as_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "snapshot": self.snapshot,
            "manifest_key": self.manifest_key,
            "schema": [list(c) for c in self.schema],
            "schema_hash": self.schema_hash,
            "mode": self.mode,
            "upserts": self.upserts,
            "deletes": self.deletes,
            "tracking_id": self.tracking_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeliveryRecord:
        return cls(
            sequence=int(data["sequence"]),
            snapshot=str(data["snapshot"]),
            manifest_key=data.get("manifest_key"),
            schema=tuple((str(a), str(b)) for a, b in data.get("schema") or []),
            schema_hash=str(data.get("schema_hash") or ""),
            mode=str(data.get("mode") or "incremental"),
            upserts=int(data.get("upserts") or 0),
            deletes=int(data.get("deletes") or 0),
            tracking_id=int(data["tracking_id"]) if data.get("tracking_id") is not None else None,
        )


def next_window(
    feed_id: str,
    sequence: int,
    mode: str,
    previous: DeliveryRecord | None,
    full_refresh: bool = False,
    destination_changed: bool = False,
) -> FeedWindow:
    """The window of a feed's next delivery: incremental from the last succeeded delivery's
    snapshot, or full (the feed's mode, a full refresh, no delivery yet, or the feed now delivering
    somewhere else than its last delivery: the new place holds none of the earlier changes)."""
    if previous is None:
        return FeedWindow(feed_id, sequence, "full", reason="the feed's first delivery")
    common = {
        "previous_manifest": previous.manifest_key,
        "previous_schema": previous.schema,
        "previous_schema_hash": previous.schema_hash,
        "previous_tracking_id": previous.tracking_id,
    }
    if full_refresh:
        return FeedWindow(feed_id, sequence, "full", reason="a full refresh was asked for", **common)
    if destination_changed:
        return FeedWindow(feed_id, sequence, "full", reason="the feed's destination changed", **common)
    if mode == "full":
        return FeedWindow(feed_id, sequence, "full", reason="the feed's mode is full", **common)
    return FeedWindow(feed_id, sequence, "incremental", previous_snapshot=previous.snapshot, **common)


def delivery_record(plan: ExportPlan, outcome: ExportOutcome, manifest_key: str | None) -> DeliveryRecord:
    """What this delivery leaves for the next one."""
    feed = plan.request.feed
    assert feed is not None
    schema = schema_of(plan.request, plan.types)
    deletes = sum(f.deletes for f in outcome.files)
    return DeliveryRecord(
        sequence=feed.sequence,
        snapshot=delivery_snapshot(outcome),
        manifest_key=manifest_key,
        schema=schema,
        schema_hash=schema_hash(schema),
        mode=feed.mode,
        upserts=outcome.rows - deletes,
        deletes=deletes,
        tracking_id=feed.tracking_id,
    )


def schema_changes(plan: ExportPlan) -> dict[str, Any] | None:
    """What changed in the schema since the previous delivery (None: nothing, or no previous one)."""
    feed = plan.request.feed
    if feed is None or feed.previous_schema is None:
        return None
    now = schema_of(plan.request, plan.types)
    if schema_hash(now) == feed.previous_schema_hash:
        return None
    before, after = dict(feed.previous_schema), dict(now)
    return {
        "added": [{"name": c, "type": t} for c, t in now if c not in before],
        "removed": [{"name": c, "type": t} for c, t in feed.previous_schema if c not in after],
        "type_changed": [
            {"name": c, "from": before[c], "to": t} for c, t in now if c in before and before[c] != t
        ],
        "previous_schema_hash": feed.previous_schema_hash,
        "schema_hash": schema_hash(now),
    }


@dataclass(frozen=True)
class Delivered:
    plan: ExportPlan
    outcome: ExportOutcome
    finalized: FinalizedExport
    record: DeliveryRecord
    manifest: dict[str, Any]


def deliver(
    conninfo: str,
    catalog: Catalog,
    request: ExportRequest,
    *,
    s3_client: Any,
    bucket: str,
    prefix: str,
) -> Delivered:
    """Plan, stream and finalize one delivery (`request.feed` set) with the ordinary engine."""
    assert request.feed is not None
    plan = plan_export(conninfo, catalog, request, prefix)
    clear_success_marker(s3_client, bucket, plan.location)
    outcome = run_export(plan, conninfo=conninfo, catalog=catalog, s3_client=s3_client, bucket=bucket)
    finalized = finalize_export(s3_client, bucket, plan, outcome)
    return Delivered(
        plan,
        outcome,
        finalized,
        delivery_record(plan, outcome, finalized.manifest_key),
        build_manifest(plan, outcome),
    )
