"""Every environment variable the project reads, read in one place (docs/configuration.md).

`Settings.from_env()` is called when the definitions are built and by the CLI, never at import
time. The Dagster resources take secrets (database URL, AWS keys, webhook secret, SMTP URL) through
`dg.EnvVar`, so those values are read by Dagster at run time and never land in run config; the
fields here say whether they are set. `settings_reference.VARIABLES` describes each variable as data:
the documentation's configuration reference is rendered from it at build time, so the two cannot drift.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from export_pipelines.core.delivery.webhook_target import parse_allowlist
from export_pipelines.core.errors import ConfigurationError
from export_pipelines.core.formats import DEFAULT_PDF_MAX_ROWS
from export_pipelines.core.requests.queue import DEFAULT_STARTS_PER_MINUTE
from export_pipelines.core.storage.migrations.request_table import DEFAULT_TENANT_MAX_ACTIVE

# PostgreSQL's units for statement_timeout; a bare number is milliseconds, as in PostgreSQL.
_TIMEOUT_UNITS = {"us": 1e-6, "ms": 1e-3, "": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_TIMEOUT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d|)\s*$")


def parse_statement_timeout(text: str) -> float | None:
    """EXPORT_STATEMENT_TIMEOUT ("300s", "200ms", "5min") in seconds; empty means the default."""
    if not text.strip():
        return None
    match = _TIMEOUT.match(text)
    if not match:
        raise ConfigurationError(
            f"EXPORT_STATEMENT_TIMEOUT: {text!r} is not a duration like 300s, 200ms or 5min"
        )
    return float(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    try:
        return int(text) if text else default
    except ValueError:
        raise ConfigurationError(f"{name}: {text!r} is not a whole number") from None


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    value = _int(environ, name, default)
    if value < 1:
        raise ConfigurationError(f"{name}: must be a whole number of at least 1, got {value}")
    return value


def _choice(environ: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    text = environ.get(name, "").strip()
    if text and text not in allowed:
        raise ConfigurationError(f"{name}: {text!r} is not one of: {', '.join(allowed)}")
    return text or default


@dataclass(frozen=True)
class Settings:
    """The deployment's settings. Optional values are None when the variable is unset or empty."""

    source_database_url: str | None = None  # SOURCE_DATABASE_URL (secret: it holds the password)
    aws_endpoint_url: str | None = None  # AWS_ENDPOINT_URL: an S3-compatible server; None on AWS
    aws_region: str = "us-east-1"  # AWS_REGION
    aws_access_key_id: str | None = None  # AWS_ACCESS_KEY_ID (None: boto3's chain, e.g. a role)
    aws_secret_access_key: str | None = None  # AWS_SECRET_ACCESS_KEY (secret)
    aws_session_token: str | None = None  # AWS_SESSION_TOKEN (secret)
    bucket: str | None = None  # EXPORT_BUCKET
    prefix: str = "exports"  # EXPORT_PREFIX
    catalog_path: str | None = None  # EXPORT_CATALOG (None: the packaged demo catalog)
    webhook_secret: str | None = None  # EXPORT_WEBHOOK_SECRET (secret)
    webhook_allowlist: tuple[str, ...] = ()  # EXPORT_WEBHOOK_ALLOWLIST, comma-separated hosts
    webhook_allow_private: bool = False  # EXPORT_WEBHOOK_ALLOW_PRIVATE=1: loopback receivers (dev only)
    smtp_url: str | None = None  # SMTP_URL (secret: it may hold a password)
    statement_timeout_seconds: float | None = None  # EXPORT_STATEMENT_TIMEOUT (None: the core's 300 s)
    sensor_interval_seconds: int = 5  # EXPORT_SENSOR_INTERVAL_SECONDS
    months_from: str = "2024-01-01"  # EXPORT_MONTHS_FROM: first month of the monthly partitions
    monthly_resource: str = "orders"  # EXPORT_MONTHLY_RESOURCE
    monthly_format: str = "csv"  # EXPORT_MONTHLY_FORMAT
    # EXPORT_MONTHLY_BATCH_SIZE: most tenant x month partitions one run of the monthly job exports
    # (one after another): the per-run cost of Dagster (~1 s) is paid once per batch, not per tenant.
    monthly_batch_size: int = 25
    pdf_max_rows: int = DEFAULT_PDF_MAX_ROWS  # EXPORT_PDF_MAX_ROWS: a larger pdf request is refused
    io_manager: str = "fs"  # EXPORT_IO_MANAGER: fs (one machine) | s3 (worker hosts: step outputs in S3)
    # EXPORT_TENANT_MAX_ACTIVE: active (pending, queued, running) requests per tenant; more are
    # refused at insert (the trigger reads it from export_limits, where `migrate` writes it).
    tenant_max_active: int = DEFAULT_TENANT_MAX_ACTIVE
    # EXPORT_TENANT_STARTS_PER_MINUTE: runs the request sensor starts per tenant per minute.
    tenant_starts_per_minute: int = DEFAULT_STARTS_PER_MINUTE
    dagster_ui_url: str = "http://127.0.0.1:3000"  # EXPORT_DAGSTER_UI_URL: links the CLI prints
    # The export API's limits against hostile and broken clients (docs/security.md).
    api_token_secret: str | None = None  # EXPORT_API_TOKEN_SECRET (secret): signs event-stream tokens
    api_max_header_bytes: int = 16 * 1024  # EXPORT_API_MAX_HEADER_BYTES: request line + headers (431)
    api_max_body_bytes: int = 128 * 1024  # EXPORT_API_MAX_BODY_BYTES: request body (413)
    api_rate_limit_per_key: str = "5/second;60/minute"  # EXPORT_API_RATE_LIMIT_PER_KEY
    api_rate_limit_per_tenant: str = "10/second;120/minute"  # EXPORT_API_RATE_LIMIT_PER_TENANT
    api_rate_limit_storage_url: str = "memory://"  # EXPORT_RATE_LIMIT_STORAGE_URL
    api_s3_timeout_seconds: float = 5.0  # EXPORT_API_S3_TIMEOUT_SECONDS: connect and read, per call
    api_s3_max_concurrent: int = 8  # EXPORT_API_S3_MAX_CONCURRENT: S3 calls in flight at once
    api_db_max_concurrent: int = 16  # EXPORT_API_DB_MAX_CONCURRENT: pooled database connections
    # EXPORT_ENTERPRISE_FEED_MODE: off | full | incremental: the enterprise tenants' default feeds.
    enterprise_feed_mode: str = "off"
    signing_key: str | None = None  # EXPORT_SIGNING_KEY (secret): Ed25519 key that signs manifests
    # EXPORT_SIGNING_KEYS_RETIRED: public keys of earlier signing keys, still published (rotation)
    signing_keys_retired: tuple[str, ...] = ()
    secrets_key: str | None = None  # EXPORT_SECRETS_KEY (secret): Fernet key(s) of destination credentials
    # EXPORT_DESTINATIONS_ALLOW_PRIVATE=1: destinations on loopback/private addresses (dev only)
    destinations_allow_private: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        def text(name: str) -> str | None:
            return environ.get(name, "").strip() or None

        return cls(
            source_database_url=text("SOURCE_DATABASE_URL"),
            aws_endpoint_url=text("AWS_ENDPOINT_URL"),
            aws_region=text("AWS_REGION") or cls.aws_region,
            aws_access_key_id=text("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=text("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=text("AWS_SESSION_TOKEN"),
            bucket=text("EXPORT_BUCKET"),
            prefix=text("EXPORT_PREFIX") or cls.prefix,
            catalog_path=text("EXPORT_CATALOG"),
            webhook_secret=text("EXPORT_WEBHOOK_SECRET"),
            webhook_allowlist=parse_allowlist(environ.get("EXPORT_WEBHOOK_ALLOWLIST", "")),
            webhook_allow_private=environ.get("EXPORT_WEBHOOK_ALLOW_PRIVATE", "").strip() == "1",
            smtp_url=text("SMTP_URL"),
            statement_timeout_seconds=parse_statement_timeout(environ.get("EXPORT_STATEMENT_TIMEOUT", "")),
            sensor_interval_seconds=_int(
                environ, "EXPORT_SENSOR_INTERVAL_SECONDS", cls.sensor_interval_seconds
            ),
            months_from=text("EXPORT_MONTHS_FROM") or cls.months_from,
            monthly_resource=text("EXPORT_MONTHLY_RESOURCE") or cls.monthly_resource,
            monthly_format=text("EXPORT_MONTHLY_FORMAT") or cls.monthly_format,
            monthly_batch_size=_positive(environ, "EXPORT_MONTHLY_BATCH_SIZE", cls.monthly_batch_size),
            pdf_max_rows=_int(environ, "EXPORT_PDF_MAX_ROWS", cls.pdf_max_rows),
            io_manager=_choice(environ, "EXPORT_IO_MANAGER", ("fs", "s3"), cls.io_manager),
            tenant_max_active=_positive(environ, "EXPORT_TENANT_MAX_ACTIVE", cls.tenant_max_active),
            tenant_starts_per_minute=_positive(
                environ, "EXPORT_TENANT_STARTS_PER_MINUTE", cls.tenant_starts_per_minute
            ),
            dagster_ui_url=(text("EXPORT_DAGSTER_UI_URL") or cls.dagster_ui_url).rstrip("/"),
            api_token_secret=text("EXPORT_API_TOKEN_SECRET"),
            api_max_header_bytes=_positive(environ, "EXPORT_API_MAX_HEADER_BYTES", cls.api_max_header_bytes),
            api_max_body_bytes=_positive(environ, "EXPORT_API_MAX_BODY_BYTES", cls.api_max_body_bytes),
            api_rate_limit_per_key=text("EXPORT_API_RATE_LIMIT_PER_KEY") or cls.api_rate_limit_per_key,
            api_rate_limit_per_tenant=text("EXPORT_API_RATE_LIMIT_PER_TENANT")
            or cls.api_rate_limit_per_tenant,
            api_rate_limit_storage_url=text("EXPORT_RATE_LIMIT_STORAGE_URL")
            or cls.api_rate_limit_storage_url,
            api_s3_timeout_seconds=float(
                _positive(environ, "EXPORT_API_S3_TIMEOUT_SECONDS", int(cls.api_s3_timeout_seconds))
            ),
            api_s3_max_concurrent=_positive(
                environ, "EXPORT_API_S3_MAX_CONCURRENT", cls.api_s3_max_concurrent
            ),
            api_db_max_concurrent=_positive(
                environ, "EXPORT_API_DB_MAX_CONCURRENT", cls.api_db_max_concurrent
            ),
            enterprise_feed_mode=_choice(
                environ,
                "EXPORT_ENTERPRISE_FEED_MODE",
                ("off", "full", "incremental"),
                cls.enterprise_feed_mode,
            ),
            signing_key=text("EXPORT_SIGNING_KEY"),
            signing_keys_retired=tuple(
                k.strip() for k in environ.get("EXPORT_SIGNING_KEYS_RETIRED", "").split(",") if k.strip()
            ),
            secrets_key=text("EXPORT_SECRETS_KEY"),
            destinations_allow_private=environ.get("EXPORT_DESTINATIONS_ALLOW_PRIVATE", "").strip() == "1",
        )

    def s3_client_options(self) -> dict[str, str | None]:
        """Keyword arguments of core.s3.make_s3_client for these settings."""
        return {
            "endpoint_url": self.aws_endpoint_url,
            "region_name": self.aws_region,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
            "aws_session_token": self.aws_session_token,
        }

    def require_source_database_url(self) -> str:
        if not self.source_database_url:
            raise ConfigurationError("SOURCE_DATABASE_URL is not set (run `source scripts/env.sh` first)")
        return self.source_database_url

    def require_bucket(self) -> str:
        if not self.bucket:
            raise ConfigurationError("EXPORT_BUCKET is not set (run `source scripts/env.sh` first)")
        return self.bucket
