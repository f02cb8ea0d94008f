# No `from __future__ import annotations` here: Dagster reads the sensor's annotations at runtime.
"""The delivery sensor: sends the notifications runs recorded in export_deliveries (webhook,
email), off the runs' slots, with retries and a bounded time per tick (core.delivery.drain.DeliveryPolicy:
at most about 20 s of sending per tick, each attempt within its own budget)."""

import dataclasses

import dagster as dg

from export_pipelines.core.delivery.drain import Channels, DeliveryPolicy, drain_deliveries
from export_pipelines.orchestration.resources import Notifier, SourceDatabase
from export_pipelines.settings import Settings


def notifier_channels(notifier: Notifier) -> Channels:
    """The notifier's channels, with its allow-private setting (EXPORT_WEBHOOK_ALLOW_PRIVATE)."""
    return dataclasses.replace(notifier.channels(), allow_private=notifier.allow_private)


def build_delivery_sensor(settings: Settings, policy: DeliveryPolicy | None = None) -> dg.SensorDefinition:
    policy = policy or DeliveryPolicy()

    @dg.sensor(
        name="export_delivery_sensor",
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends recorded notifications (webhook, email) with retries, off the runs' slots.",
    )
    def export_delivery_sensor(
        context: dg.SensorEvaluationContext, source: SourceDatabase, notifier: Notifier
    ) -> dg.SkipReason:
        report = drain_deliveries(
            source.deliveries(), source.requests(), notifier_channels(notifier), policy, context.log
        )
        # A sensor without a job only ever skips; the reason is the tick's summary in the UI.
        return dg.SkipReason(f"deliveries: {report}")

    return export_delivery_sensor
