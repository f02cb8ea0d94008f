"""The code location's definitions, built from settings (nothing is read at import time)."""

from __future__ import annotations

import dagster as dg

from export_pipelines.orchestration.delivery_sensor import build_delivery_sensor
from export_pipelines.orchestration.jobs import build_monthly_job, janitor_job, tenant_export_job
from export_pipelines.orchestration.resources import resources_from_settings
from export_pipelines.orchestration.schedules import build_monthly_schedule, janitor_schedule
from export_pipelines.orchestration.sensors import build_sensors
from export_pipelines.settings import Settings


def build_definitions(settings: Settings) -> dg.Definitions:
    monthly_job = build_monthly_job(settings)
    return dg.Definitions(
        jobs=[tenant_export_job, monthly_job, janitor_job],
        schedules=[build_monthly_schedule(monthly_job), janitor_schedule],
        sensors=[*build_sensors(settings, monthly_job), build_delivery_sensor(settings)],
        resources=resources_from_settings(settings),
    )
