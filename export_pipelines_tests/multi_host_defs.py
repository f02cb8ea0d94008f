"""The code location as the several-machines set-up runs it: the project's definitions with step
outputs in S3 (EXPORT_IO_MANAGER=s3), for test_multi_host.py's daemon, code server and workers.

Once orchestration/definitions.py adds `io_manager_resources(settings)` itself, the test can load
workspace.yaml's `export_pipelines.definitions` instead and this module goes.
"""

from __future__ import annotations

import dagster as dg

from export_pipelines.orchestration.definitions import build_definitions
from export_pipelines.orchestration.io_managers import io_manager_resources
from export_pipelines.orchestration.resources import resources_from_settings
from export_pipelines.settings import Settings


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.from_env()
    s3 = resources_from_settings(settings)["s3"]
    return dg.Definitions.merge(
        build_definitions(settings),
        dg.Definitions(resources=io_manager_resources(settings, s3=s3, kind="s3")),
    )
