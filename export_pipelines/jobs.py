"""Jobs: the one export graph as an ad-hoc job and as a tenant x month partitioned job; the janitor."""

import os

import dagster as dg

from export_pipelines.core.janitor import run_janitor
from export_pipelines.ops import count_rows, export_files, finalize, notify
from export_pipelines.resources import ExportS3, ExportSettings, SourceDatabase

TENANT_PARTITIONS = dg.DynamicPartitionsDefinition(name="tenants")
MONTHLY_PARTITIONS = dg.MultiPartitionsDefinition(
    {
        "tenant": TENANT_PARTITIONS,
        "month": dg.MonthlyPartitionsDefinition(
            start_date=os.environ.get("EXPORT_MONTHS_FROM", "2024-01-01")
        ),
    }
)
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


def monthly_run_config(partition_key: str) -> dict:
    """Tenant and month come from the partition (count_rows enforces them); resource and format
    can be changed in the launchpad."""
    # Multi-partition keys read "month|tenant" (dimensions sorted by name).
    tenant = partition_key.split("|", 1)[1] if "|" in partition_key else ""
    return {
        "ops": {
            "count_rows": {
                "config": {
                    "tenant_id": tenant,
                    "resource": os.environ.get("EXPORT_MONTHLY_RESOURCE", "orders"),
                    "format": os.environ.get("EXPORT_MONTHLY_FORMAT", "csv"),
                }
            }
        }
    }


monthly_tenant_export_job = export_graph.to_job(
    name="monthly_tenant_export_job",
    description="One tenant, one month (time_column inside the month); keys idempotent per partition.",
    partitions_def=MONTHLY_PARTITIONS,
    config=dg.PartitionedConfig(
        partitions_def=MONTHLY_PARTITIONS, run_config_for_partition_key_fn=monthly_run_config
    ),
    executor_def=EXECUTOR,
)


@dg.op(tags={"kind": "s3"})
def clean_up_exports(
    context: dg.OpExecutionContext, source: SourceDatabase, s3: ExportS3, export_settings: ExportSettings
) -> None:
    """Expire exports past their link expiry (delete their files), abort abandoned uploads and
    forget checkpoints of exports abandoned for a week."""
    checkpoints = source.checkpoints()
    try:
        report = run_janitor(
            source.requests(),
            s3.get_client(),
            export_settings.bucket,
            export_settings.prefix,
            export_settings.abort_uploads_after(),
            checkpoints,
        )
    finally:
        checkpoints.close()
    context.add_output_metadata(
        {
            "expired_requests": report.expired_requests,
            "deleted_objects": report.deleted_objects,
            "aborted_uploads": report.aborted_uploads,
            "pruned_checkpoints": report.pruned_checkpoints,
        }
    )


@dg.job(description="Daily hygiene: expire old exports, abort abandoned multipart uploads.")
def janitor_job() -> None:
    clean_up_exports()
