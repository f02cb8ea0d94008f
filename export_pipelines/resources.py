"""Dagster resources: thin wrappers that hand the core its connections and settings.

Secrets come from the environment through `EnvVar`; they never appear in run config or logs.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from export_pipelines.core.catalog import Catalog, load_catalog
from export_pipelines.core.checkpoints import CheckpointStore
from export_pipelines.core.request_store import RequestStore
from export_pipelines.core.s3 import make_s3_client


class SourceDatabase(dg.ConfigurableResource):
    """The tenant database (and the `export_requests` queue)."""

    url: str

    @property
    def conninfo(self) -> str:
        return self.url

    def requests(self) -> RequestStore:
        return RequestStore(self.url).migrate_once()

    def checkpoints(self) -> CheckpointStore:
        return CheckpointStore(self.url).migrate_once()


class ExportS3(S3Resource):
    """dagster-aws's S3 resource, with the client settings exports rely on (SigV4, retries).

    One client per resource instance (i.e. per run), built on first use: making a boto3 client
    loads botocore's S3 model (0.1-0.3 s), and a run used to make three (resource start-up,
    export_files, finalize). boto3 clients are thread-safe."""

    _client: Any = PrivateAttr(default=None)

    def get_client(self) -> Any:
        if self._client is None:
            self._client = make_s3_client(
                endpoint_url=self.endpoint_url,
                region_name=self.region_name,
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=self.aws_secret_access_key,
                aws_session_token=self.aws_session_token,
                max_attempts=self.max_attempts,
            )
        return self._client

    def get_object_to_set_on_execution_context(self) -> Any:
        # The ops take the resource itself and call get_client(); nothing reads
        # context.resources.s3, so don't build a client at run start just for it.
        return self


class ExportSettings(dg.ConfigurableResource):
    """Where exports go and how they are cut."""

    bucket: str
    prefix: str = "exports"
    catalog_path: str | None = None
    part_size_mib: int = 8
    max_parts_in_flight: int = 3
    abort_uploads_after_hours: int = 24  # janitor: multipart uploads older than this are aborted

    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_path or None)

    def abort_uploads_after(self) -> timedelta:
        return timedelta(hours=self.abort_uploads_after_hours)


class Notifier(dg.ConfigurableResource):
    """Webhook signing key, SMTP server and the webhook host allowlist."""

    webhook_secret: str
    smtp_url: str | None = None
    webhook_allowlist: str = ""  # comma-separated hosts; ".example.com" allows subdomains
    sender: str = "exports@localhost"

    def allowlist(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.webhook_allowlist.split(",") if h.strip())


def _optional_env(name: str) -> Any:
    # EnvVar keeps the value out of the run config; optional variables may be unset (e.g. no
    # AWS_ENDPOINT_URL on AWS, no static keys with an instance role).
    return dg.EnvVar(name) if os.environ.get(name) else None


def default_resources() -> dict[str, Any]:
    return {
        "source": SourceDatabase(url=dg.EnvVar("SOURCE_DATABASE_URL")),
        "s3": ExportS3(
            endpoint_url=_optional_env("AWS_ENDPOINT_URL"),
            region_name=os.environ.get("AWS_REGION", "us-east-1"),
            aws_access_key_id=_optional_env("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=_optional_env("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=_optional_env("AWS_SESSION_TOKEN"),
            max_attempts=6,
        ),
        "export_settings": ExportSettings(
            bucket=dg.EnvVar("EXPORT_BUCKET"),
            prefix=os.environ.get("EXPORT_PREFIX", "exports"),
            catalog_path=_optional_env("EXPORT_CATALOG"),
        ),
        "notifier": Notifier(
            webhook_secret=dg.EnvVar("EXPORT_WEBHOOK_SECRET"),
            smtp_url=_optional_env("SMTP_URL"),
            webhook_allowlist=os.environ.get("EXPORT_WEBHOOK_ALLOWLIST", ""),
        ),
    }
