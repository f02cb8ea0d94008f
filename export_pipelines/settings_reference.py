"""The configuration reference as data: every environment variable `Settings.from_env` reads, its
group, meaning and default. The docs render it (docs/hooks/settings_reference.py) and a test checks
it lists every variable read, so the reference cannot drift from the code."""

from __future__ import annotations

from dataclasses import dataclass

from export_pipelines.settings import Settings


@dataclass(frozen=True)
class Variable:
    """One environment variable as the configuration reference shows it."""

    name: str
    field: str  # the Settings field it fills; its default is shown unless `default` says better
    group: str
    meaning: str
    default: str | None = None
    required: bool = False
    secret: bool = False  # the value is never logged nor put in run config

    def default_text(self) -> str:
        if self.default is not None:
            return self.default
        value = Settings.__dataclass_fields__[self.field].default
        return "unset" if value is None else str(value)


_STORAGE = "Source database and storage"
_NOTIFY = "Notifications"
_REQUESTS = "Requests and limits"
_MONTHLY = "Monthly dumps"
_API = "Export API limits"
_DELIVERY = "Destinations and signed manifests"

VARIABLES: tuple[Variable, ...] = (
    Variable(
        "SOURCE_DATABASE_URL",
        "source_database_url",
        _STORAGE,
        "PostgreSQL URL of the tenant data and of the service's own tables (export_requests, "
        "checkpoints, deliveries, keys). A literal `%` in the password is written `%25`.",
        required=True,
        secret=True,
    ),
    Variable(
        "AWS_ENDPOINT_URL",
        "aws_endpoint_url",
        _STORAGE,
        "An S3-compatible server (SeaweedFS, MinIO, ...); leave unset on AWS.",
        default="unset (AWS)",
    ),
    Variable("AWS_REGION", "aws_region", _STORAGE, "Region of the bucket, and of the link signatures."),
    Variable(
        "AWS_ACCESS_KEY_ID",
        "aws_access_key_id",
        _STORAGE,
        "Static S3 key; unset, boto3's own chain is used (instance or container role, SSO, ...).",
        default="unset (boto3's chain)",
    ),
    Variable(
        "AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", _STORAGE, "The static key's secret.", secret=True
    ),
    Variable(
        "AWS_SESSION_TOKEN",
        "aws_session_token",
        _STORAGE,
        "Temporary credentials. Their expiry is unknown, so download links then last at most 12 h.",
        secret=True,
    ),
    Variable("EXPORT_BUCKET", "bucket", _STORAGE, "The bucket exports are written to.", required=True),
    Variable(
        "EXPORT_PREFIX",
        "prefix",
        _STORAGE,
        "Key prefix of every export folder (`{prefix}/tenant=.../{resource}/{export id}/`) and of "
        "Dagster's own objects (`{prefix}/_dagster/`).",
    ),
    Variable(
        "EXPORT_CATALOG",
        "catalog_path",
        _STORAGE,
        "Path of the catalog YAML: the only tables, columns and filters an export may touch.",
        default="the packaged `export_pipelines/catalog.yaml`",
    ),
    Variable(
        "EXPORT_STATEMENT_TIMEOUT",
        "statement_timeout_seconds",
        _STORAGE,
        "PostgreSQL `statement_timeout` of export queries, in PostgreSQL's units (`300s`, `200ms`, "
        "`5min`; a bare number is milliseconds).",
        default="300s",
    ),
    Variable(
        "EXPORT_IO_MANAGER",
        "io_manager",
        _STORAGE,
        "Where Dagster keeps step outputs: `fs` (local disk, one machine) or `s3` (under "
        "`{EXPORT_PREFIX}/_dagster/`, needed when a retried run may start on another host).",
    ),
    Variable(
        "EXPORT_WEBHOOK_SECRET",
        "webhook_secret",
        _NOTIFY,
        "HMAC-SHA256 key of the `X-Export-Signature` header on every webhook.",
        required=True,
        secret=True,
    ),
    Variable(
        "EXPORT_WEBHOOK_ALLOWLIST",
        "webhook_allowlist",
        _NOTIFY,
        "Comma-separated webhook hosts; `.example.com` allows its subdomains. When set, a webhook "
        "to any other host is refused.",
        default="empty (any public host)",
    ),
    Variable(
        "EXPORT_WEBHOOK_ALLOW_PRIVATE",
        "webhook_allow_private",
        _NOTIFY,
        "`1` lets webhooks reach loopback and private addresses (a local receiver, development "
        "only); link-local, multicast and unspecified addresses stay refused.",
        default="unset (refused)",
    ),
    Variable(
        "SMTP_URL",
        "smtp_url",
        _NOTIFY,
        "Mail server for email notifications: `smtp://host:port`, `smtps://user:pass@host`, "
        "`?starttls=1`. Unset, emails are skipped with a logged reason.",
        secret=True,
    ),
    Variable(
        "EXPORT_SENSOR_INTERVAL_SECONDS",
        "sensor_interval_seconds",
        _REQUESTS,
        "How often the request, failure, cancel and delivery sensors run (the reaper: at least 30 s).",
    ),
    Variable(
        "EXPORT_TENANT_MAX_ACTIVE",
        "tenant_max_active",
        _REQUESTS,
        "Active (pending, queued, running) requests a tenant may have; more are refused at insert, "
        "by every door. `export-pipelines migrate` writes it into the database.",
    ),
    Variable(
        "EXPORT_TENANT_STARTS_PER_MINUTE",
        "tenant_starts_per_minute",
        _REQUESTS,
        "Runs the request sensor and the submitter start per tenant per minute; the rest wait.",
    ),
    Variable(
        "EXPORT_PDF_MAX_ROWS",
        "pdf_max_rows",
        _REQUESTS,
        "The most rows a `pdf` export may have; a larger request is refused when it is planned.",
    ),
    Variable(
        "EXPORT_DAGSTER_UI_URL",
        "dagster_ui_url",
        _MONTHLY,
        "Where the data team opens the Dagster UI; `export-pipelines backfill` prints the backfill's "
        "page under it (`…/runs/b/<id>`).",
    ),
    Variable(
        "EXPORT_MONTHS_FROM",
        "months_from",
        _MONTHLY,
        "First month of the monthly partitions (a date, `YYYY-MM-01`).",
    ),
    Variable(
        "EXPORT_MONTHLY_RESOURCE",
        "monthly_resource",
        _MONTHLY,
        "Catalog resource the monthly dumps export.",
    ),
    Variable("EXPORT_MONTHLY_FORMAT", "monthly_format", _MONTHLY, "Format of the monthly dumps."),
    Variable(
        "EXPORT_MONTHLY_BATCH_SIZE",
        "monthly_batch_size",
        _MONTHLY,
        "Most tenant x month partitions one monthly run exports, one after another (`1`: a run per "
        "partition). Dagster's per-run cost is then paid once per batch.",
    ),
    Variable(
        "EXPORT_API_TOKEN_SECRET",
        "api_token_secret",
        _API,
        "Signs the event-stream tokens (`POST …/events/token`). Unset with one worker: a random "
        "secret per process (tokens die with it); required with `serve --workers` above 1. Nothing "
        "in the database reveals it.",
        default="unset (random per process)",
        secret=True,
    ),
    Variable(
        "EXPORT_API_MAX_HEADER_BYTES",
        "api_max_header_bytes",
        _API,
        "Most bytes of a request line plus headers; a longer one is answered 431 before more is read.",
    ),
    Variable(
        "EXPORT_API_MAX_BODY_BYTES",
        "api_max_body_bytes",
        _API,
        "Most bytes of a request body; a longer one is answered 413 before more is read.",
    ),
    Variable(
        "EXPORT_API_RATE_LIMIT_PER_KEY",
        "api_rate_limit_per_key",
        _API,
        "Mutating requests (create, cancel, delete, stream token, notify settings) one API key may "
        "make, as `N/second;M/minute`; more are answered 429 with Retry-After.",
    ),
    Variable(
        "EXPORT_API_RATE_LIMIT_PER_TENANT",
        "api_rate_limit_per_tenant",
        _API,
        "The same, summed over every key of one tenant (operator keys count for the tenant they act for).",
    ),
    Variable(
        "EXPORT_RATE_LIMIT_STORAGE_URL",
        "api_rate_limit_storage_url",
        _API,
        "Where the rate-limit counters live: `memory://` (one process) or `redis://host:6379/1` "
        "(shared by several worker processes or hosts; otherwise each worker counts on its own).",
    ),
    Variable(
        "EXPORT_API_S3_TIMEOUT_SECONDS",
        "api_s3_timeout_seconds",
        _API,
        "Connect and read timeout of each S3 call the API makes (links, manifest, delete, readiness).",
    ),
    Variable(
        "EXPORT_API_S3_MAX_CONCURRENT",
        "api_s3_max_concurrent",
        _API,
        "S3 calls the API makes at once; more wait briefly, then answer 503, so a hanging S3 cannot "
        "take every worker thread.",
    ),
    Variable(
        "EXPORT_API_DB_MAX_CONCURRENT",
        "api_db_max_concurrent",
        _API,
        "Database connections of the API's pool (each API worker process); more requests wait briefly, "
        "then answer 503.",
    ),
    Variable(
        "EXPORT_ENTERPRISE_FEED_MODE",
        "enterprise_feed_mode",
        _MONTHLY,
        "`off`, `full` or `incremental`: every enterprise tenant gets a default monthly feed per catalog "
        "resource with a time column, made by the feed sensor, in this mode (`full` for a resource "
        "without change tracking). The tenant x month partitions keep working beside it.",
    ),
    Variable(
        "EXPORT_SIGNING_KEY",
        "signing_key",
        _DELIVERY,
        "Ed25519 private key that signs every manifest (`manifest.json.sig`): base64 of the 32-byte "
        "seed (`export-pipelines signing-key generate`) or a PKCS#8 PEM. Its public key is served at "
        "`GET /v1/signing-keys`; unset, manifests go out unsigned and a warning is logged.",
        required=True,
        secret=True,
    ),
    Variable(
        "EXPORT_SIGNING_KEYS_RETIRED",
        "signing_keys_retired",
        _DELIVERY,
        "Comma-separated public keys (base64) of earlier signing keys, still published at "
        "`GET /v1/signing-keys` so deliveries signed before a rotation keep verifying.",
        default="empty",
    ),
    Variable(
        "EXPORT_SECRETS_KEY",
        "secrets_key",
        _DELIVERY,
        "Fernet key(s) that encrypt destination credentials at rest; comma-separated, newest first "
        "(older keys still decrypt; `export-pipelines secrets rotate` re-encrypts with the first).",
        required=True,
        secret=True,
    ),
    Variable(
        "EXPORT_DESTINATIONS_ALLOW_PRIVATE",
        "destinations_allow_private",
        _DELIVERY,
        "`1` lets destinations name loopback and private hosts (the local test servers, development "
        "only); link-local and metadata addresses stay refused.",
        default="unset (refused)",
    ),
)
