"""The code location: `dagster dev -m export_pipelines.definitions` (or workspace.yaml) loads this."""

from __future__ import annotations

import dagster as dg

from export_pipelines.jobs import tenant_export_job
from export_pipelines.resources import default_resources

defs = dg.Definitions(
    jobs=[tenant_export_job],
    resources=default_resources(),
)


def tenant_export_job_with_resources() -> dg.JobDefinition:
    """For `dagster.reconstructable` (the CLI's `demo` runs the job out of process)."""
    return defs.resolve_job_def("tenant_export_job")
