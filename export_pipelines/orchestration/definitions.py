"""The code location's definitions, built from settings (nothing is read at import time)."""

from __future__ import annotations

import warnings

import dagster as dg

from export_pipelines.core.requests.catalog import load_catalog
from export_pipelines.orchestration.cancel_sensor import build_cancel_sensor
from export_pipelines.orchestration.delivery_sensor import build_delivery_sensor
from export_pipelines.orchestration.feed_sensor import build_feed_sensor
from export_pipelines.orchestration.io_managers import io_manager_resources
from export_pipelines.orchestration.jobs import janitor_job, janitor_schedule, tenant_export_job
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


def export_asset_specs(settings: Settings) -> list[dg.AssetSpec]:
    """`exports/<resource>` for every catalog resource, described in code: each ad-hoc export
    (tenant_export_job, whatever door asked) records a materialization of it with its download
    links (run_page.download_links), so the asset's page lists every export of that resource, newest
    first, and the run's header names the asset. Not materializable from the UI: an export needs a
    tenant and its options, which the job's launchpad (or the API) takes."""
    catalog = load_catalog(settings.catalog_path)
    return [
        dg.AssetSpec(
            key=dg.AssetKey(["exports", name]),
            description=(
                f"Ad-hoc exports of the catalog resource `{name}`: one materialization per export, with "
                "its download link, manifest, tenant, rows and size. Made by tenant_export_job runs "
                "(the API, an app's row, `export-pipelines request`, the launchpad); the monthly dumps "
                "are the asset monthly_export."
            ),
            group_name="exports",
            kinds={"postgres", "s3"},
            metadata={"resource": name, "made_by": "tenant_export_job"},
        )
        for name in catalog.resources
    ]


def build_definitions(settings: Settings) -> dg.Definitions:
    for notice in KNOWN_BETA_NOTICES:
        warnings.filterwarnings("ignore", message=notice, category=dg.BetaWarning)
    monthly_asset, monthly_job = build_monthly_job(settings)
    resources = resources_from_settings(settings)
    return dg.Definitions(
        assets=[monthly_asset, *export_asset_specs(settings)],
        jobs=[tenant_export_job, monthly_job, janitor_job],
        schedules=[build_monthly_schedule(monthly_job, settings.monthly_batch_size), janitor_schedule],
        sensors=[
            *build_sensors(settings, monthly_job),
            build_delivery_sensor(settings),
            build_cancel_sensor(settings),
            build_feed_sensor(settings),
        ],
        # EXPORT_IO_MANAGER=s3 keeps step outputs where every worker host can read them.
        # Without a config schema: no run (launchpad, backfill dialog) can override them.
        resources=run_config_free({**resources, **io_manager_resources(settings, s3=resources["s3"])}),
    )
