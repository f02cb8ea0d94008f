# No `from __future__ import annotations` here: Dagster reads the schedule's annotations at runtime.
"""The monthly enterprise dump's schedule: on the 1st, the previous month of every enterprise tenant."""

from datetime import UTC, datetime
from typing import Any

import dagster as dg

from export_pipelines.core.requests.tenants import list_tenants
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.monthly.partitions import (
    TENANT_PARTITIONS_NAME,
    monthly_key,
    partitionable,
    previous_month,
    tenant_batches,
)
from export_pipelines.orchestration.resources import ExportSettings, SourceDatabase


def build_monthly_schedule(monthly_job: Any, batch_size: int = 25) -> dg.ScheduleDefinition:
    """The schedule of the monthly job (built from settings, so the schedule is too). Each run
    request covers up to `batch_size` tenants (EXPORT_MONTHLY_BATCH_SIZE) of the month: Dagster
    runs several partitions in one run as a key range (its range tags), and the asset
    (monthly_asset.py) reports each partition apart."""

    @dg.schedule(
        name="monthly_enterprise_export_schedule",
        job=monthly_job,
        cron_schedule="0 2 1 * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="On the 1st at 02:00 UTC: the previous month for every enterprise tenant.",
    )
    def monthly_enterprise_export_schedule(
        context: dg.ScheduleEvaluationContext, source: SourceDatabase, export_settings: ExportSettings
    ) -> list[dg.RunRequest]:
        month = previous_month(context.scheduled_execution_time or datetime.now(UTC))
        tenants = []
        for tenant in list_tenants(source.conninfo, export_settings.catalog(), enterprise_only=True):
            if partitionable(tenant):
                tenants.append(tenant)
            else:  # one bad id must not cost every other tenant its monthly dump
                context.log.warning(f"tenant {tenant!r} skipped: its id cannot be a partition key")
        have = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
        if missing := [t for t in tenants if t not in have]:
            context.instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, missing)
        # Run config: the job's defaults (EXPORT_MONTHLY_RESOURCE / _FORMAT). Tags: run_coordinator.
        ordered = context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME)
        requests = []
        for batch in tenant_batches(ordered, tenants, batch_size):
            first, last = str(monthly_key(batch[0], month)), str(monthly_key(batch[-1], month))
            if len(batch) == 1:  # an ordinary one-partition run
                requests.append(
                    dg.RunRequest(run_key=first, partition_key=first, tags={tags.TENANT: batch[0]})
                )
            else:
                requests.append(
                    dg.RunRequest(
                        run_key=f"{first}..{last}",
                        tags={tags.RANGE_START: first, tags.RANGE_END: last},
                    )
                )
        return requests

    return monthly_enterprise_export_schedule
