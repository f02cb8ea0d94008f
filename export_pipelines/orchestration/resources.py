"""Dagster resources: thin wrappers that hand the core its connections, stores and settings.

`resources_from_settings` fills them from `Settings`; secrets go through `dg.EnvVar`, so Dagster
reads them at run time and they never appear in run config or logs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from export_pipelines.core.delivery.delivery_store import DeliveryStore
from export_pipelines.core.delivery.destinations.secrets import SecretBox
from export_pipelines.core.delivery.drain import Channels
from export_pipelines.core.delivery.webhook_target import parse_allowlist
from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.signing import ManifestSigner, load_signer
from export_pipelines.core.formats import DEFAULT_PDF_MAX_ROWS
from export_pipelines.core.requests.catalog import Catalog, load_catalog
from export_pipelines.core.requests.queue import DEFAULT_STARTS_PER_MINUTE, RequestQueue
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.storage.s3 import make_s3_client
from export_pipelines.settings import Settings

log = logging.getLogger("export_pipelines.orchestration")

# (database url, cap) pairs this process has written to export_limits.
_caps_written: set[tuple[str, int]] = set()


class SourceDatabase(dg.ConfigurableResource):
    """The tenant database, and the stores kept in it (export_requests, checkpoints).

    Each store is opened once per run (or sensor tick), on first use, and closed when Dagster
    tears the resource down: a run used to open a connection per progress update."""

    url: str
    # EXPORT_TENANT_MAX_ACTIVE, written to export_limits (where the insert trigger reads it) when
    # this process first opens the request store; None leaves the stored value.
    tenant_max_active: int | None = None
    _requests: RequestStore | None = PrivateAttr(default=None)
    _checkpoints: CheckpointStore | None = PrivateAttr(default=None)
    _deliveries: DeliveryStore | None = PrivateAttr(default=None)

    @property
    def conninfo(self) -> str:
        return self.url

    def requests(self) -> RequestStore:
        if self._requests is None:
            store = RequestStore(self.url).migrate_once()
            if self.tenant_max_active is not None:
                key = (self.url, self.tenant_max_active)
                if key not in _caps_written:
                    store.set_tenant_max_active(self.tenant_max_active)
                    _caps_written.add(key)
            self._requests = store
        return self._requests

    def queue(self) -> RequestQueue:
        """The fair queue, on the request store's connection."""
        return RequestQueue.on(self.requests().conn)

    def checkpoints(self) -> CheckpointStore:
        if self._checkpoints is None:
            self._checkpoints = CheckpointStore(self.url).migrate_once()
        return self._checkpoints

    def deliveries(self) -> DeliveryStore:
        if self._deliveries is None:
            self._deliveries = DeliveryStore(self.url).migrate_once()
        return self._deliveries

    def close_stores(self) -> None:
        for store in (self._requests, self._checkpoints, self._deliveries):
            if store is not None:
                store.close()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close_stores()


_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def cached_s3_client(**options: Any) -> Any:
    """One boto3 S3 client per process and options (make_s3_client's keyword arguments)."""
    key = tuple(sorted(options.items()))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = make_s3_client(**options)
    return client


class ExportS3(dg.ConfigurableResource):
    """The export bucket's S3 client settings (SigV4, retries): dagster-aws's S3Resource fields,
    without importing dagster-aws (with its components, ~50 MB and ~0.5 s of every run process's
    start-up); the S3 IO manager of several-machine set-ups loads it (io_managers.py).

    One client per process and settings, built on first use: making a boto3 client loads
    botocore's S3 model (0.1-0.3 s idle, 0.6-1.6 s on a loaded 2-core machine), and a warm worker
    (a Celery pool child) runs one export after another, each of which made its own (the step
    outputs' IO manager too). boto3 clients are thread-safe; credentials from boto3's chain
    refresh themselves inside the client."""

    endpoint_url: str | None = None
    region_name: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    max_attempts: int = 5

    def client_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region_name,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
            "aws_session_token": self.aws_session_token,
            "max_attempts": self.max_attempts,
        }

    def get_client(self) -> Any:
        return cached_s3_client(**self.client_options())

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
    statement_timeout_seconds: float | None = None  # of export queries; None: the core's default
    pdf_max_rows: int = DEFAULT_PDF_MAX_ROWS  # a pdf request over this many rows is refused
    tenant_starts_per_minute: int = DEFAULT_STARTS_PER_MINUTE  # runs the sensor starts per tenant
    signing_key: str | None = None  # EXPORT_SIGNING_KEY, through EnvVar: signs every manifest
    secrets_key: str | None = None  # EXPORT_SECRETS_KEY, through EnvVar: decrypts destination credentials
    destinations_allow_private: bool = False  # EXPORT_DESTINATIONS_ALLOW_PRIVATE (dev only)

    def signer(self) -> ManifestSigner | None:
        """The manifest signer; None (manifests unsigned, and said so in the run's log) without a key."""
        if not self.signing_key:
            log.warning("EXPORT_SIGNING_KEY is not set: this manifest goes out unsigned")
            return None
        return load_signer(self.signing_key)

    def secret_box(self) -> SecretBox | None:
        return SecretBox(self.secrets_key) if self.secrets_key else None

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
    allow_private: bool = False  # EXPORT_WEBHOOK_ALLOW_PRIVATE: loopback/private receivers (dev only)

    def allowlist(self) -> tuple[str, ...]:
        return parse_allowlist(self.webhook_allowlist)

    def channels(self) -> Channels:
        return Channels(
            self.webhook_secret,
            self.allowlist(),
            self.smtp_url,
            self.sender,
            allow_private=self.allow_private,
        )


def _secret(name: str, value: str | None) -> Any:
    # EnvVar keeps the value out of the run config; optional secrets may be unset (no static
    # keys with an instance role, no SMTP server).
    return dg.EnvVar(name) if value else None


def resources_from_settings(settings: Settings) -> dict[str, Any]:
    return {
        "source": SourceDatabase(
            url=dg.EnvVar("SOURCE_DATABASE_URL"), tenant_max_active=settings.tenant_max_active
        ),
        "s3": ExportS3(
            endpoint_url=settings.aws_endpoint_url,
            region_name=settings.aws_region,
            aws_access_key_id=_secret("AWS_ACCESS_KEY_ID", settings.aws_access_key_id),
            aws_secret_access_key=_secret("AWS_SECRET_ACCESS_KEY", settings.aws_secret_access_key),
            aws_session_token=_secret("AWS_SESSION_TOKEN", settings.aws_session_token),
            max_attempts=6,
        ),
        "export_settings": ExportSettings(
            bucket=dg.EnvVar("EXPORT_BUCKET"),
            prefix=settings.prefix,
            catalog_path=settings.catalog_path,
            statement_timeout_seconds=settings.statement_timeout_seconds,
            pdf_max_rows=settings.pdf_max_rows,
            tenant_starts_per_minute=settings.tenant_starts_per_minute,
            signing_key=_secret("EXPORT_SIGNING_KEY", settings.signing_key),
            secrets_key=_secret("EXPORT_SECRETS_KEY", settings.secrets_key),
            destinations_allow_private=settings.destinations_allow_private,
        ),
        "notifier": Notifier(
            webhook_secret=dg.EnvVar("EXPORT_WEBHOOK_SECRET"),
            smtp_url=_secret("SMTP_URL", settings.smtp_url),
            webhook_allowlist=",".join(settings.webhook_allowlist),
            allow_private=settings.webhook_allow_private,
        ),
    }


def run_config_free(resources: Mapping[str, Any]) -> dict[str, Any]:
    """The resources as definitions without a config schema: their settings are the deployment's
    (settings.py, the environment, secrets through EnvVar resolved when a run starts), so no run
    can change them and the launchpad and the backfill dialog show no `resources:` block (a bucket,
    an S3 endpoint or a database URL is not something to edit per run). Each still runs its own
    setup and teardown around the run (the request store closed at the end)."""
    return {key: _fixed(key, resource) for key, resource in resources.items()}


def _fixed(key: str, resource: Any) -> Any:
    description = f"{type(resource).__name__}: from the deployment's settings, not run config"

    def initialized(_: dg.InitResourceContext) -> Iterator[Any]:
        with resource.process_config_and_initialize_cm() as value:
            yield value

    # An empty schema, not none: Dagster reads "no schema" as "any config", which a run could set
    # (ignored, but it would look like an override); an empty one refuses every entry.
    if isinstance(resource, dg.ConfigurableIOManagerFactory) or key == "io_manager":
        return dg.IOManagerDefinition(resource_fn=initialized, config_schema={}, description=description)
    return dg.ResourceDefinition(resource_fn=initialized, config_schema={}, description=description)
