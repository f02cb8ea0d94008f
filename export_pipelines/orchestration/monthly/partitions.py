# No `from __future__ import annotations` here: Dagster reads the sensor's annotations at runtime.
"""Tenant x month partitions: their definitions, keys, the month a key stands for, and the sensor
that keeps the tenant partitions in step with the tenants table."""

from datetime import UTC, datetime

import dagster as dg

from export_pipelines.core.requests.request import PARTITION_KEY_SEPARATOR
from export_pipelines.core.requests.tenants import list_tenants
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.resources import ExportSettings, SourceDatabase

TENANT_PARTITIONS = dg.DynamicPartitionsDefinition(name="tenants")
TENANT_PARTITIONS_NAME = TENANT_PARTITIONS.name or "tenants"
MONTH = "month"


def monthly_partitions(months_from: str) -> dg.MultiPartitionsDefinition:
    """Tenant x month, months from `months_from` (EXPORT_MONTHS_FROM)."""
    return dg.MultiPartitionsDefinition(
        {tags.TENANT: TENANT_PARTITIONS, MONTH: dg.MonthlyPartitionsDefinition(start_date=months_from)}
    )


def partitionable(tenant: str) -> bool:
    """Whether a tenant id can be a partition of the tenant x month job: not blank, without the
    multi-partition separator '|' (Dagster splits "month|tenant" keys there: such a key fails the
    whole schedule tick with DagsterUnknownPartitionError)."""
    return bool(tenant.strip()) and PARTITION_KEY_SEPARATOR not in tenant


def monthly_key(tenant: str, month: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({tags.TENANT: tenant, MONTH: month})


def month_range(month: str) -> tuple[str, str]:
    """[start, end) of the month starting at `month`, as ISO 8601 UTC timestamps."""
    start = datetime.fromisoformat(month).replace(tzinfo=UTC)
    end = start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
    return start.isoformat(), end.isoformat()


def previous_month(moment: datetime) -> str:
    """'YYYY-MM-01' of the month before `moment`'s (in UTC)."""
    first = moment.astimezone(UTC).replace(day=1)
    prev = first.replace(year=first.year - (first.month == 1), month=(first.month - 2) % 12 + 1)
    return prev.strftime("%Y-%m-01")


def tenant_batches(ordered: list[str], chosen: list[str], size: int) -> list[list[str]]:
    """`chosen` tenants cut into runs of at most `size`, each a run of consecutive tenants in
    `ordered` (the `tenants` partitions in Dagster's order): a run of several partitions is a key
    range, and a range from t-a to t-b covers every tenant between them in that order, so a batch
    must never step over a tenant that was not chosen (as Dagster's own backfills cut ranges)."""
    wanted = set(chosen)
    batches: list[list[str]] = []
    current: list[str] = []
    for tenant in ordered:
        if tenant in wanted and len(current) < size:
            current.append(tenant)
            continue
        if current:
            batches.append(current)
        current = [tenant] if tenant in wanted else []
    if current:
        batches.append(current)
    return batches


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps the 'tenants' dynamic partitions in sync with the catalog's tenants table.",
)
def tenant_partitions_sensor(
    context: dg.SensorEvaluationContext, source: SourceDatabase, export_settings: ExportSettings
) -> dg.SensorResult:
    wanted = set()
    for tenant in list_tenants(source.conninfo, export_settings.catalog()):
        if partitionable(tenant):
            wanted.add(tenant)
        else:
            context.log.warning(f"tenant {tenant!r} skipped: its id cannot be a partition key")
    have = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    missing = sorted(wanted - have)
    return dg.SensorResult(
        dynamic_partitions_requests=[TENANT_PARTITIONS.build_add_request(missing)] if missing else []
    )
