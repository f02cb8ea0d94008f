"""Where step outputs are kept between steps: the local filesystem (one machine) or S3 (several).

With one machine (DefaultRunLauncher) Dagster's default filesystem IO manager pickles outputs under
$DAGSTER_HOME/storage, which is fine. With worker hosts (deploy/celery/dagster.yaml) a retried run
re-executes from the failed step, possibly on another host, and loads the earlier steps' outputs
from the parent run: those must be where every host can read them, so EXPORT_IO_MANAGER=s3 puts
them in the export bucket under `{EXPORT_PREFIX}/_dagster/` (dagster-aws S3PickleIOManager).

dagster-aws is imported only then: with its components it is ~50 MB and ~0.5 s of a run process's
start-up, which a one-machine run does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg

from export_pipelines.core.engine.janitor import RUN_OBJECTS_FOLDER
from export_pipelines.settings import Settings

if TYPE_CHECKING:
    from export_pipelines.orchestration.resources import ExportS3

IO_MANAGERS = ("fs", "s3")


def dagster_prefix(settings: Settings) -> str:
    """The key prefix of Dagster's own objects (step outputs) in the export bucket."""
    return f"{settings.prefix.strip('/')}/{RUN_OBJECTS_FOLDER}"  # the janitor deletes them after a week


def io_manager_resources(
    settings: Settings, s3: ExportS3 | None = None, kind: str | None = None
) -> dict[str, Any]:
    """The `io_manager` resource for EXPORT_IO_MANAGER (`kind`): {} for fs (Dagster's default).

    `s3` is the code location's S3 resource (resources_from_settings(settings)["s3"]), so step
    outputs use the same endpoint and credentials as the exports; built the same way when omitted.
    """
    kind = kind or settings.io_manager  # EXPORT_IO_MANAGER, read by settings.py
    if kind not in IO_MANAGERS:
        raise ValueError(f"EXPORT_IO_MANAGER={kind!r}: allowed values are {', '.join(IO_MANAGERS)}")
    if kind == "fs":
        return {}
    from dagster_aws.s3 import S3PickleIOManager, S3Resource

    from export_pipelines.orchestration.resources import cached_s3_client, resources_from_settings

    if s3 is None:
        s3 = resources_from_settings(settings)["s3"]

    class _SharedClientS3(S3Resource):
        """dagster-aws's resource type, which its IO manager requires, on the exports' client."""

        def get_client(self) -> Any:
            return cached_s3_client(
                endpoint_url=self.endpoint_url,
                region_name=self.region_name,
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=self.aws_secret_access_key,
                aws_session_token=self.aws_session_token,
                max_attempts=self.max_attempts,
            )

    return {
        "io_manager": S3PickleIOManager(
            s3_resource=_SharedClientS3(**s3.client_options()),
            s3_bucket=dg.EnvVar("EXPORT_BUCKET"),
            s3_prefix=dagster_prefix(settings),
        )
    }
