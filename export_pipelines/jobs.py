"""Jobs built from the one export graph."""

from __future__ import annotations

import dagster as dg

from export_pipelines.ops import count_rows, export_files, finalize, notify


@dg.graph
def export_graph() -> None:
    plan = count_rows()
    notify(finalize(plan, export_files(plan)))


tenant_export_job = export_graph.to_job(
    name="tenant_export_job",
    description="Export one tenant's rows of one catalog resource to S3 files; all inputs in run config.",
)
