"""Jobs: the export graph as the exports asset and its ad-hoc job; the janitor and its daily
schedule. (The tenant x month job is the monthly_export asset's: monthly/monthly_asset.py.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from export_pipelines.core.requests.catalog import load_catalog
from export_pipelines.orchestration.exports_asset import EXPORTS_GROUP, asset_output, export_asset_key
from export_pipelines.orchestration.notify_op import build_notify_op
from export_pipelines.orchestration.ops import (
    ExportConfig,
    clean_up_exports,
    count_rows,
    export_files,
    finalize,
)
from export_pipelines.orchestration.run_config import ENTRY_OP
from export_pipelines.settings import Settings

# A whole run in one process: on a 2-core machine a process per op only adds start-up time.
EXECUTOR = dg.in_process_executor


EXPORT_JOB = "tenant_export_job"
# The node of the export graph in the job: its steps are `exports.count_rows`, `exports.export_files`…
EXPORT_GRAPH = "exports"


def build_exports_asset(resources: Sequence[str]) -> dg.AssetsDefinition:
    """`exports/<resource>` for every catalog resource, one graph in code: an export of a
    resource is a materialization of its asset, made by the graph's last op once the export is
    committed, with the download links, tenant, rows and size. A run materializes the one asset of
    the resource in its config (the others' outputs are optional and not produced)."""
    outs = {
        asset_output(name): dg.AssetOut(
            key=export_asset_key(name),
            dagster_type=dg.Nothing,
            is_required=False,
            description=(
                f"Ad-hoc exports of the catalog resource `{name}`: one materialization per export, with "
                "its download link, manifest, tenant, rows and size. Made by tenant_export_job runs "
                "(the API, an app's row, `export-pipelines request`, the launchpad: a tenant and its "
                "options in the run config); the monthly dumps are the asset monthly_export."
            ),
            kinds={"postgres", "s3"},
            metadata={"resource": name},
        )
        for name in resources
    }
    notify = build_notify_op(resources)

    @dg.graph_multi_asset(name=EXPORT_GRAPH, outs=outs, group_name=EXPORTS_GROUP, can_subset=True)
    def exports() -> dict[str, Any]:
        plan = count_rows()
        produced = notify(plan, finalize(plan, export_files(plan)))
        # One output comes back as itself, several as a named tuple.
        return produced._asdict() if len(outs) > 1 else {next(iter(outs)): produced}

    return exports


def export_config_only() -> dg.ConfigMapping:
    """The ad-hoc job's run config is the export's config block alone, `ops: count_rows: config:`,
    in the same shape as before the graph became the exports asset (sensor, CLI, bench and tests
    write it unchanged; the job maps it onto the graph's node). The resources have no config schema
    at all (resources.run_config_free), so the launchpad opens with this block only. Required
    fields (tenant_id, resource) have no default: the launchpad's own check says "Missing required
    config entry" before anything is launched."""
    fields = dict(ExportConfig.to_config_schema().config_type.fields)
    outer = {"ops": dg.Field({ENTRY_OP: dg.Field({"config": dg.Field(fields)})})}
    return dg.ConfigMapping(
        config_fn=lambda config: {"ops": {EXPORT_GRAPH: {"ops": config["ops"]}}},
        config_schema=outer,
    )


def build_export_job(settings: Settings) -> tuple[dg.AssetsDefinition, UnresolvedAssetJobDefinition]:
    """The exports asset of the settings' catalog and the ad-hoc job that materializes it (the
    definitions resolve it with their resources)."""
    asset = build_exports_asset(list(load_catalog(settings.catalog_path).resources))
    job = dg.define_asset_job(
        EXPORT_JOB,
        selection=dg.AssetSelection.assets(asset),
        description="Export one tenant's rows of one catalog resource to S3 files; all inputs in run config.",
        config=export_config_only(),
        executor_def=EXECUTOR,
    )
    return asset, job


def export_job_with(resources: Mapping[str, Any], settings: Settings | None = None) -> dg.JobDefinition:
    """tenant_export_job resolved with these resources, to execute in process (tests, the demo, the
    bench)."""
    asset, job = build_export_job(settings or Settings())
    return dg.Definitions(assets=[asset], jobs=[job], resources=resources).resolve_job_def(EXPORT_JOB)


@dg.job(description="Daily hygiene: expire old exports, abort abandoned multipart uploads.")
def janitor_job() -> None:
    clean_up_exports()


janitor_schedule = dg.ScheduleDefinition(
    name="janitor_schedule",
    job=janitor_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:00 UTC: expire old exports and abort abandoned multipart uploads.",
)
