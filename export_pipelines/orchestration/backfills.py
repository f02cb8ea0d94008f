"""Which partitions to re-run: those whose latest run failed (good partitions are left alone)."""

import dagster as dg


def failed_partitions(
    instance: dg.DagsterInstance, job_name: str = "monthly_tenant_export_job", month: str | None = None
) -> list[str]:
    """Partition keys ('YYYY-MM-01|tenant') whose most recent run failed or was canceled."""
    latest = instance.get_run_partition_data(dg.RunsFilter(job_name=job_name))
    bad = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    return sorted(
        p.partition
        for p in latest
        if p.status in bad and (month is None or p.partition.startswith(f"{month}|"))
    )
