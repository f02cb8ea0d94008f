"""The code location's definitions, built from settings (nothing is read at import time)."""

from __future__ import annotations

import warnings

import dagster as dg

from export_pipelines.orchestration.cancel_sensor import build_cancel_sensor
from export_pipelines.orchestration.delivery_sensor import build_delivery_sensor
from export_pipelines.orchestration.feed_sensor import build_feed_sensor
from export_pipelines.orchestration.io_managers import io_manager_resources
from export_pipelines.orchestration.jobs import build_export_job, janitor_job, janitor_schedule
from export_pipelines.orchestration.monthly.monthly_asset import build_monthly_job
from export_pipelines.orchestration.monthly.schedules import build_monthly_schedule
from export_pipelines.orchestration.resources import resources_from_settings, run_config_free
from export_pipelines.orchestration.sensors import build_sensors
from export_pipelines.settings import Settings

# Dagster 1.13 says "beta" of two things these definitions use: the monthly asset's BackfillPolicy
# (its batch runs rely on it: monthly/monthly_asset.py), and the `owners` of every sensor copy it
# makes while resolving the definitions (it passes that parameter on itself). Nothing for whoever
# loads the code location (`dagster dev`, a code server) to act on; any other notice still shows.
KNOWN_BETA_NOTICES = (
    r"Parameter `backfill_policy` of function `asset`",
    r"Parameter `owners` of initializer `SensorDefinition",
)


def build_definitions(settings: Settings) -> dg.Definitions:
    for notice in KNOWN_BETA_NOTICES:
        warnings.filterwarnings("ignore", message=notice, category=dg.BetaWarning)
    monthly_asset, monthly_job = build_monthly_job(settings)
    exports_asset, export_job = build_export_job(settings)
    resources = resources_from_settings(settings)
    return dg.Definitions(
        assets=[monthly_asset, exports_asset],
        jobs=[export_job, monthly_job, janitor_job],
        schedules=[build_monthly_schedule(monthly_job, settings.monthly_batch_size), janitor_schedule],
        sensors=[
            *build_sensors(settings, export_job, monthly_job),
            build_delivery_sensor(settings),
            build_cancel_sensor(settings),
            build_feed_sensor(settings),
        ],
        # EXPORT_IO_MANAGER=s3 keeps step outputs where every worker host can read them.
        # Without a config schema: no run (launchpad, backfill dialog) can override them.
        resources=run_config_free({**resources, **io_manager_resources(settings, s3=resources["s3"])}),
    )
