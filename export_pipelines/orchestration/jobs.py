"""Jobs: the one export graph as an ad-hoc job and as a tenant x month partitioned job; the janitor."""

from __future__ import annotations

import dagster as dg

from export_pipelines.orchestration.notify_op import notify
from export_pipelines.orchestration.ops import clean_up_exports, count_rows, export_files, finalize
from export_pipelines.orchestration.partitions import monthly_partitions, tenant_of_key
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines.settings import Settings

# A whole run in one process: on a 2-core machine a process per op only adds start-up time.
EXECUTOR = dg.in_process_executor


@dg.graph
def export_graph() -> None:
    plan = count_rows()
    notify(plan, finalize(plan, export_files(plan)))


tenant_export_job = export_graph.to_job(
    name="tenant_export_job",
    description="Export one tenant's rows of one catalog resource to S3 files; all inputs in run config.",
    executor_def=EXECUTOR,
)


def build_monthly_job(settings: Settings) -> dg.JobDefinition:
    """Tenant x month partitions from settings.months_from; resource and format from settings, and
    changeable in the launchpad. Tenant and month come from the partition (count_rows enforces them)."""
    partitions = monthly_partitions(settings.months_from)

    def run_config_for(partition_key: str) -> dict:
        return export_run_config(
            tenant_id=tenant_of_key(partition_key),
            resource=settings.monthly_resource,
            format=settings.monthly_format,
        )

    return export_graph.to_job(
        name="monthly_tenant_export_job",
        description="One tenant, one month (time_column inside the month); keys idempotent per partition.",
        partitions_def=partitions,
        config=dg.PartitionedConfig(
            partitions_def=partitions, run_config_for_partition_key_fn=run_config_for
        ),
        executor_def=EXECUTOR,
    )


@dg.job(description="Daily hygiene: expire old exports, abort abandoned multipart uploads.")
def janitor_job() -> None:
    clean_up_exports()
