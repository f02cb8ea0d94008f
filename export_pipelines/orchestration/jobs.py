"""Jobs: the one export graph as the ad-hoc job; the janitor and its daily schedule. (The tenant x
month job is the monthly_export asset's: monthly/monthly_asset.py.)"""

from __future__ import annotations

import dagster as dg

from export_pipelines.orchestration.notify_op import notify
from export_pipelines.orchestration.ops import (
    ExportConfig,
    clean_up_exports,
    count_rows,
    export_files,
    finalize,
)
from export_pipelines.orchestration.run_config import ENTRY_OP

# A whole run in one process: on a 2-core machine a process per op only adds start-up time.
EXECUTOR = dg.in_process_executor


@dg.graph
def export_graph() -> None:
    plan = count_rows()
    notify(plan, finalize(plan, export_files(plan)))


def export_config_only() -> dg.ConfigMapping:
    """The ad-hoc job's run config is the export's config block alone, `ops: count_rows: config:`,
    in the same shape as before (sensor, CLI, bench and tests write it unchanged). The resources
    have no config schema at all (resources.run_config_free), so the launchpad opens with this
    block only. Required fields (tenant_id, resource) have no default: the launchpad's own check
    says "Missing required config entry" before anything is launched."""
    fields = dict(ExportConfig.to_config_schema().config_type.fields)
    outer = {"ops": dg.Field({ENTRY_OP: dg.Field({"config": dg.Field(fields)})})}
    return dg.ConfigMapping(config_fn=lambda config: {"ops": config["ops"]}, config_schema=outer)


tenant_export_job = export_graph.to_job(
    name="tenant_export_job",
    description="Export one tenant's rows of one catalog resource to S3 files; all inputs in run config.",
    config=export_config_only(),
    executor_def=EXECUTOR,
)


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
