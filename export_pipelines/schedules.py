"""Schedules: the monthly enterprise dump and the daily janitor."""

from datetime import UTC, datetime

import dagster as dg

from export_pipelines.jobs import TENANT_PARTITIONS, janitor_job, monthly_tenant_export_job
from export_pipelines.resources import ExportSettings, SourceDatabase
from export_pipelines.sensors import list_tenants


def previous_month(moment: datetime) -> str:
    first = moment.astimezone(UTC).replace(day=1)
    prev = first.replace(year=first.year - (first.month == 1), month=(first.month - 2) % 12 + 1)
    return prev.strftime("%Y-%m-01")


@dg.schedule(
    job=monthly_tenant_export_job,
    cron_schedule="0 2 1 * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="On the 1st at 02:00 UTC: the previous month for every enterprise tenant.",
)
def monthly_enterprise_export_schedule(
    context: dg.ScheduleEvaluationContext, source: SourceDatabase, export_settings: ExportSettings
) -> list[dg.RunRequest]:
    month = previous_month(context.scheduled_execution_time or datetime.now(UTC))
    tenants = list_tenants(source, export_settings, enterprise_only=True)
    name = TENANT_PARTITIONS.name or "tenants"
    have = set(context.instance.get_dynamic_partitions(name))
    if missing := [t for t in tenants if t not in have]:
        context.instance.add_dynamic_partitions(name, missing)
    return [
        dg.RunRequest(
            run_key=f"{month}|{tenant}",
            partition_key=dg.MultiPartitionKey({"tenant": tenant, "month": month}),
            tags={"tenant": tenant},
        )
        for tenant in tenants
    ]


janitor_schedule = dg.ScheduleDefinition(
    name="janitor_schedule",
    job=janitor_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:00 UTC: expire old exports and abort abandoned multipart uploads.",
)
