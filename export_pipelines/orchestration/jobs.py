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


# What the launchpad opens with: the export's config block, and nothing else.
LAUNCHPAD_DEFAULTS = {"tenant_id": "", "resource": "orders"}


def export_config_only() -> dg.ConfigMapping:
    """The ad-hoc job's run config is the export's config block alone, `ops: count_rows: config:`,
    in the same shape as before (sensor, CLI, bench and tests write it unchanged). Through a config
    mapping, the resources keep the values the definitions bound from settings and drop out of the
    run config schema: the launchpad no longer opens pre-filled with ~37 lines of resource settings
    (bucket, keys, part sizes) nobody should edit per run. tenant_id and resource get launchpad
    defaults; an empty tenant_id is refused by count_rows with the field's name."""
    export_type = ExportConfig.to_config_schema().config_type
    fields = dict(export_type.fields)
    for name, default in LAUNCHPAD_DEFAULTS.items():
        fields[name] = dg.Field(
            fields[name].config_type, default_value=default, description=fields[name].description
        )
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
