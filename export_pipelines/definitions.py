"""The code location: `dagster dev -w workspace.yaml` (or `-m export_pipelines.definitions`) loads
`defs`. Dagster calls it when it loads the code location (code server, run worker); importing
this module builds nothing and reads no environment variable."""

from __future__ import annotations

import gc

import dagster as dg

from export_pipelines.orchestration.definitions import build_definitions
from export_pipelines.settings import Settings


@dg.definitions
def defs() -> dg.Definitions:
    definitions = build_definitions(Settings.from_env())
    # GC_FREEZE_NOTE
    gc.freeze()
    return definitions


def tenant_export_job_with_resources() -> dg.JobDefinition:
    """For `dagster.reconstructable` (the CLI's `demo` runs the job out of process)."""
    return build_definitions(Settings.from_env()).resolve_job_def("tenant_export_job")
