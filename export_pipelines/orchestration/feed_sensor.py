# No `from __future__ import annotations` here: Dagster reads the sensor's annotations at runtime.
"""The feed sensor: makes the delivery of every feed that is due (docs/feeds.md), as a pending
export_requests row that the request sensor launches like any request (caps, fair queue, retries);
makes the enterprise tenants' default feeds when the deployment asks for them; prunes the tombstones
every feed has moved past. The data team sees and pauses it in the UI like any sensor."""

from datetime import UTC, datetime

import dagster as dg

from export_pipelines.core.engine.change_tracking import prune_tombstones
from export_pipelines.core.errors import DeliveryInProgress, TooManyActive
from export_pipelines.core.requests.feed_store import FeedStore, check_feed, start_delivery
from export_pipelines.core.requests.tenants import list_tenants
from export_pipelines.core.storage.pg_connect import open_connection
from export_pipelines.orchestration.feed_steps import feed_deliveries
from export_pipelines.orchestration.resources import ExportSettings, SourceDatabase
from export_pipelines.settings import Settings

FEED_SENSOR_NAME = "export_feed_sensor"


def launch_due_feeds(
    source: SourceDatabase, export_settings: ExportSettings, enterprise_mode: str, monthly_format: str = "csv"
) -> str:
    """One tick: default feeds, due deliveries, tombstone pruning. Returns the tick's summary."""
    now = datetime.now(UTC)
    started, waiting = 0, 0
    with open_connection(source.conninfo, autocommit=True) as conn:
        feeds = FeedStore.on(conn)
        if enterprise_mode != "off":
            catalog = export_settings.catalog()
            for tenant in list_tenants(source.conninfo, catalog, enterprise_only=True):
                for spec in catalog.resources.values():
                    if spec.time_column is None:
                        continue
                    mode = enterprise_mode if spec.change_tracking else "full"
                    fields = check_feed(
                        catalog,
                        (),
                        {
                            "tenant_id": tenant,
                            "resource": spec.name,
                            "format": monthly_format,
                            "frequency": "monthly",
                            "mode": mode,
                        },
                    )
                    feeds.ensure_default(tenant, fields)
        for feed in feeds.due(now):
            try:
                start_delivery(conn, feed, now=now)
                started += 1
            except (DeliveryInProgress, TooManyActive):
                waiting += 1  # still due: the next tick tries again
        pruned = prune_tombstones(conn, feed_deliveries(source).oldest_feed_snapshots())
    return (
        f"{started} deliveries made, {waiting} feeds waiting (a delivery active or the tenant's cap), "
        f"{pruned} tombstones pruned"
    )


def build_feed_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name=FEED_SENSOR_NAME,
        minimum_interval_seconds=max(settings.sensor_interval_seconds, 30),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Makes the deliveries of due feeds (rows the request sensor launches); prunes "
        "tombstones.",
    )
    def export_feed_sensor(
        context: dg.SensorEvaluationContext, source: SourceDatabase, export_settings: ExportSettings
    ) -> dg.SkipReason:
        return dg.SkipReason(
            launch_due_feeds(source, export_settings, settings.enterprise_feed_mode, settings.monthly_format)
        )

    return export_feed_sensor
