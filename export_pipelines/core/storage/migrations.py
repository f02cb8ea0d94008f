"""The project's tables in the source database, created and upgraded by one idempotent `migrate`.

- `export_requests`: the queue apps write to and the status they read (core/requests/request_store.py).
- `export_checkpoints`, `export_checkpoint_files`, `export_checkpoint_parts`: what an export has
  durably uploaded, so a retry resumes (core/engine/checkpoints.py).
- `export_deliveries`: notifications waiting to be sent, sent, or given up (core/delivery/delivery_store.py).
- `export_destinations`: tenants' own buckets, containers and SFTP servers (core/delivery/destinations/).
- `export_limits`: the per-tenant caps the insert trigger enforces (written by `migrate`).
- `export_request_status_history`: every status a request row took, with the time (a trigger
  writes it), so operators and tests see the lifecycle; a guard trigger keeps a canceled row
  canceled.
- `export_refusals`: how many requests each cap refused, for the metrics (core/requests/refusals.py).
- the role `export_app`: what apps may do with export_requests (docs/security.md).

Each statement may run again (IF NOT EXISTS, DROP CONSTRAINT IF EXISTS + ADD, CREATE OR REPLACE,
guarded role creation), so migrating an up-to-date database changes nothing.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from export_pipelines.core.storage.pg_connect import open_connection

REQUESTS_TABLE = """
CREATE TABLE IF NOT EXISTS public.export_requests (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      text NOT NULL,
    resource       text NOT NULL,
    format         text NOT NULL DEFAULT 'csv',
    compression    text,
    filters        jsonb NOT NULL DEFAULT '{}'::jsonb,
    columns        text[],
    webhook_url    text,
    email          text,
    status         text NOT NULL DEFAULT 'pending',
    attempt        int NOT NULL DEFAULT 1,
    rows_total     bigint,
    rows_exported  bigint NOT NULL DEFAULT 0,
    bytes_written  bigint NOT NULL DEFAULT 0,
    run_id         text,
    manifest_key   text,
    download_url   text,
    expires_at     timestamptz,
    error          text,
    notified_at    timestamptz,
    notify_error   text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    queued_at      timestamptz,
    started_at     timestamptz,
    completed_at   timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_requests_status_check
        CHECK (status IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'expired'))
);
CREATE INDEX IF NOT EXISTS export_requests_pending_idx
    ON public.export_requests (created_at) WHERE status IN ('pending', 'queued');
CREATE INDEX IF NOT EXISTS export_requests_expiry_idx
    ON public.export_requests (expires_at) WHERE status = 'succeeded';
"""

CHECKPOINT_TABLES = """
CREATE TABLE IF NOT EXISTS public.export_checkpoints (
    folder           text PRIMARY KEY,
    fingerprint      text NOT NULL,
    rows_total       bigint NOT NULL,
    high_water_mark  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- Which process works on the export now (host:pid), for operators and the kill tests.
ALTER TABLE public.export_checkpoints ADD COLUMN IF NOT EXISTS worker text;
-- When the first attempt planned the export (epoch seconds): a resumed report keeps its title.
ALTER TABLE public.export_checkpoints ADD COLUMN IF NOT EXISTS planned_at double precision;
CREATE TABLE IF NOT EXISTS public.export_checkpoint_files (
    folder            text NOT NULL REFERENCES public.export_checkpoints ON DELETE CASCADE,
    file_number       int NOT NULL,
    fingerprint       text NOT NULL,
    object_key        text NOT NULL,
    upload_id         text,
    upload_token      text NOT NULL,
    part_size         bigint NOT NULL,
    start_after       text,
    start_batch_rows  int NOT NULL,
    snapshot          text NOT NULL DEFAULT '',
    status            text NOT NULL DEFAULT 'uploading'
                      CHECK (status IN ('uploading', 'complete')),
    rows              bigint,
    bytes             bigint,
    parts             int,
    sha256            text,
    first_key         text,
    last_key          text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (folder, file_number)
);
CREATE TABLE IF NOT EXISTS public.export_checkpoint_parts (
    folder           text NOT NULL,
    file_number      int NOT NULL,
    part_number      int NOT NULL,
    etag             text NOT NULL,
    checksum_sha256  text NOT NULL,
    size             bigint NOT NULL,
    rows_in_file     bigint NOT NULL,
    first_key        text,
    last_key         text,
    next_batch_rows  int NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (folder, file_number, part_number),
    FOREIGN KEY (folder, file_number)
        REFERENCES public.export_checkpoint_files ON DELETE CASCADE
);
"""

DELIVERIES_TABLE = """
CREATE TABLE IF NOT EXISTS public.export_deliveries (
    id               bigserial PRIMARY KEY,
    request_id       uuid,                      -- NULL for exports that no request row serves
    tenant_id        text NOT NULL,
    event            text NOT NULL,             -- export.succeeded | export.failed | export.canceled
    channel          text NOT NULL CHECK (channel IN ('webhook', 'email')),
    target           text NOT NULL,             -- the webhook URL or the email address
    payload          jsonb NOT NULL,            -- the webhook body (docs/requests.md)
    email_subject    text,
    email_body       text,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,                      -- short and stable: tenants may read it
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX IF NOT EXISTS export_deliveries_due_idx
    ON public.export_deliveries (next_attempt_at) WHERE status = 'pending';
"""

# Sizes one request may carry, enforced by the database for every door (apps insert directly).
# Far above real use (the validators in core/requests/request.py say the same, with friendlier messages),
# far below what hurts the sensor that reads the rows.
MAX_FILTERS_BYTES = 64 * 1024
MAX_COLUMNS = 1000
MAX_WEBHOOK_URL_CHARS = 2048
MAX_EMAIL_CHARS = 254
MAX_TENANT_ID_CHARS = 256
DEFAULT_TENANT_MAX_ACTIVE = 5
# Bounds of the other text columns of export_requests: every one is bounded, so no door (an app's
# INSERT above all) can make a row that costs the sensor, the API or a listing megabytes.
MAX_NAME_CHARS = 128  # resource (a catalog name)
MAX_CODE_CHARS = 32  # format, compression, origin
MAX_COLUMNS_BYTES = 64 * 1024  # the columns array as text: every entry bounded with it
MAX_KEY_CHARS = 1024  # manifest_key (an S3 key is at most 1024 bytes)
MAX_URL_CHARS = 16 * 1024  # download_url (a presigned URL with a session token)
MAX_MESSAGE_CHARS = 8000  # error, notify_error (the stores write at most 4000)
MAX_ID_CHARS = 256  # run_id, export_id, idempotency_fingerprint
# The SQLSTATE the insert trigger raises for a tenant the tenants table does not list.
UNKNOWN_TENANT_SQLSTATE = "EX422"
# The SQLSTATE the insert trigger raises when a tenant has too many active requests: a class of
# its own ("EX"), so apps can tell it from every PostgreSQL error and answer HTTP 429.
TENANT_CAP_SQLSTATE = "EX429"
APP_ROLE = "export_app"
# The columns an app may write; everything else is the service's (docs/security.md).
APP_INSERT_COLUMNS = (
    "tenant_id",
    "resource",
    "format",
    "compression",
    "filters",
    "columns",
    "webhook_url",
    "email",
    "idempotency_key",
)

# The CHECKs are added NOT VALID: they bind every new or updated row at once, while a database
# that already holds an oversized row still migrates. Sizes bind rows that may still run; a row
# that ended (failed, canceled, expired) is exempt, so the sensor can fail an oversized old row.
TRUST_BOUNDARY = f"""
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS error_code text;
-- Monthly partitions' rows (core/monthly_requests.py): export_id names the folder (NULL = the row's
-- id; 'YYYY-MM' for a month), origin says who made the row. Neither is in the app role's grant.
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS export_id text;
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS origin text NOT NULL DEFAULT 'request';
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS idempotency_key text;
CREATE UNIQUE INDEX IF NOT EXISTS export_requests_idempotency_idx
    ON public.export_requests (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The fair queue and the cap count active rows per tenant.
CREATE INDEX IF NOT EXISTS export_requests_tenant_active_idx
    ON public.export_requests (tenant_id, created_at) WHERE status IN ('pending', 'queued', 'running');
CREATE INDEX IF NOT EXISTS export_requests_tenant_started_idx
    ON public.export_requests (tenant_id, queued_at) WHERE queued_at IS NOT NULL;
ALTER TABLE public.export_requests DROP CONSTRAINT IF EXISTS export_requests_status_check;
ALTER TABLE public.export_requests ADD CONSTRAINT export_requests_status_check
    CHECK (status IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'canceled', 'expired'))
    NOT VALID;
ALTER TABLE public.export_requests DROP CONSTRAINT IF EXISTS export_requests_error_code_check;
ALTER TABLE public.export_requests ADD CONSTRAINT export_requests_error_code_check
    CHECK (error_code IN ('invalid_request', 'source_timeout', 'storage_unavailable', 'canceled',
                          'internal', 'destination_unreachable', 'destination_denied',
                          'destination_not_found', 'destination_invalid'))
    NOT VALID;
ALTER TABLE public.export_requests DROP CONSTRAINT IF EXISTS export_requests_size_check;
ALTER TABLE public.export_requests ADD CONSTRAINT export_requests_size_check
    CHECK (status IN ('failed', 'canceled', 'expired')
           OR (octet_length(filters::text) <= {MAX_FILTERS_BYTES}
           AND (columns IS NULL OR cardinality(columns) <= {MAX_COLUMNS})
           AND (webhook_url IS NULL OR char_length(webhook_url) <= {MAX_WEBHOOK_URL_CHARS})
           AND (email IS NULL OR char_length(email) <= {MAX_EMAIL_CHARS})
           AND char_length(tenant_id) <= {MAX_TENANT_ID_CHARS}
           AND (idempotency_key IS NULL OR char_length(idempotency_key) <= 256)))
    NOT VALID;
-- Every other text column: the request's own fields for every row (an app inserts them), the
-- service's columns with bounds far above what the service writes.
ALTER TABLE public.export_requests DROP CONSTRAINT IF EXISTS export_requests_text_check;
ALTER TABLE public.export_requests ADD CONSTRAINT export_requests_text_check
    CHECK (char_length(resource) <= {MAX_NAME_CHARS}
           AND char_length(format) <= {MAX_CODE_CHARS}
           AND (compression IS NULL OR char_length(compression) <= {MAX_CODE_CHARS})
           AND (columns IS NULL OR octet_length(columns::text) <= {MAX_COLUMNS_BYTES})
           AND char_length(tenant_id) <= {MAX_TENANT_ID_CHARS}
           AND (webhook_url IS NULL OR char_length(webhook_url) <= {MAX_WEBHOOK_URL_CHARS})
           AND (email IS NULL OR char_length(email) <= {MAX_EMAIL_CHARS})
           AND (idempotency_key IS NULL OR char_length(idempotency_key) <= 256)
           AND char_length(origin) <= {MAX_CODE_CHARS}
           AND (run_id IS NULL OR char_length(run_id) <= {MAX_ID_CHARS})
           AND (export_id IS NULL OR char_length(export_id) <= {MAX_ID_CHARS})
           AND (manifest_key IS NULL OR char_length(manifest_key) <= {MAX_KEY_CHARS})
           AND (download_url IS NULL OR char_length(download_url) <= {MAX_URL_CHARS})
           AND (error IS NULL OR char_length(error) <= {MAX_MESSAGE_CHARS})
           AND (notify_error IS NULL OR char_length(notify_error) <= {MAX_MESSAGE_CHARS}))
    NOT VALID;

CREATE TABLE IF NOT EXISTS public.export_limits (
    name        text PRIMARY KEY,
    value       bigint NOT NULL CHECK (value >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO public.export_limits (name, value) VALUES ('tenant_max_active', {DEFAULT_TENANT_MAX_ACTIVE})
    ON CONFLICT (name) DO NOTHING;

-- At most tenant_max_active active (pending, queued, running) rows per tenant, answered at insert
-- for every door. The advisory lock (per tenant, until the inserting transaction ends) makes two
-- concurrent inserts count one after the other. SECURITY DEFINER: the app role cannot read
-- export_limits, nor other tenants' rows once row-level security is added.
CREATE OR REPLACE FUNCTION public.export_requests_tenant_cap() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $fn$
DECLARE
    cap bigint;
    active bigint;
BEGIN
    IF NEW.status NOT IN ('pending', 'queued', 'running') THEN
        RETURN NEW;
    END IF;
    -- Rows of monthly partitions (origin 'monthly') are the service's own: never refused.
    IF NEW.origin = 'monthly' THEN
        RETURN NEW;
    END IF;
    SELECT value INTO cap FROM public.export_limits WHERE name = 'tenant_max_active';
    cap := coalesce(cap, {DEFAULT_TENANT_MAX_ACTIVE});
    PERFORM pg_advisory_xact_lock(hashtext('export_requests_tenant_cap'), hashtext(NEW.tenant_id));
    SELECT count(*) INTO active FROM public.export_requests
        WHERE tenant_id = NEW.tenant_id AND status IN ('pending', 'queued', 'running')
          AND origin <> 'monthly';
    IF active >= cap THEN
        RAISE EXCEPTION USING
            ERRCODE = '{TENANT_CAP_SQLSTATE}',
            MESSAGE = format('at most %s exports may be active (pending, queued or running) and '
                             'tenant_id %s has %s; retry after one finishes',
                             cap, quote_literal(left(NEW.tenant_id, 100)), active),
            HINT = 'retry when one of them has finished';
    END IF;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS export_requests_tenant_cap ON public.export_requests;
CREATE TRIGGER export_requests_tenant_cap BEFORE INSERT ON public.export_requests
    FOR EACH ROW EXECUTE FUNCTION public.export_requests_tenant_cap();

-- The app role: NOLOGIN, granted to each app's own login role (GRANT {APP_ROLE} TO app_login).
DO $role$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        CREATE ROLE {APP_ROLE} NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are cluster-wide: another database's migration made it a moment ago
END
$role$;
REVOKE ALL ON public.export_requests FROM {APP_ROLE};
GRANT SELECT ON public.export_requests TO {APP_ROLE};
GRANT INSERT ({", ".join(APP_INSERT_COLUMNS)}) ON public.export_requests TO {APP_ROLE};
REVOKE ALL ON public.export_limits FROM {APP_ROLE};
"""

# The export API's keys, and the export_requests columns only the API writes (core/requests/api_keys.py).
API_TABLES = """
CREATE TABLE IF NOT EXISTS public.export_api_keys (
    id            bigserial PRIMARY KEY,
    tenant_id     text,                           -- NULL only for operator keys
    name          text NOT NULL DEFAULT '',
    key_hash      text NOT NULL UNIQUE,           -- hex SHA-256 of the whole token
    key_prefix    text NOT NULL,                  -- the token's first characters, for people
    is_operator   boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    CONSTRAINT export_api_keys_tenant_check CHECK (is_operator OR tenant_id IS NOT NULL)
);
-- Written by the API only (the service's columns, docs/security.md).
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS cancel_requested_at timestamptz;
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS idempotency_fingerprint text;
ALTER TABLE public.export_requests DROP CONSTRAINT IF EXISTS export_requests_fingerprint_check;
ALTER TABLE public.export_requests ADD CONSTRAINT export_requests_fingerprint_check
    CHECK (idempotency_fingerprint IS NULL OR char_length(idempotency_fingerprint) <= 256)
    NOT VALID;
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS link_expiry_hours int;
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS max_rows_per_file bigint;
-- GET /v1/exports: a tenant's rows newest first, keyset on (created_at, id).
CREATE INDEX IF NOT EXISTS export_requests_tenant_created_idx
    ON public.export_requests (tenant_id, created_at DESC, id DESC);
-- A canceled row whose run may still be going or whose folder may still hold files: the cancel
-- sensor stops the run, deletes the folder and clears the flag.
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS cancel_cleanup_pending boolean NOT NULL
    DEFAULT false;
DROP INDEX IF EXISTS public.export_requests_cancel_idx;
-- The cancel sensor's work list.
CREATE INDEX IF NOT EXISTS export_requests_cancel_cleanup_idx
    ON public.export_requests (cancel_requested_at) WHERE cancel_cleanup_pending;
"""

# Tenants' default notify targets (docs/data-team.md): used by monthly partitions'
# rows and by requests without targets of their own.
TENANT_SETTINGS_TABLE = f"""
CREATE TABLE IF NOT EXISTS public.export_tenant_settings (
    tenant_id    text PRIMARY KEY,
    webhook_url  text,
    email        text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_tenant_settings_size_check CHECK (
        char_length(tenant_id) <= {MAX_TENANT_ID_CHARS}
        AND (webhook_url IS NULL OR char_length(webhook_url) <= {MAX_WEBHOOK_URL_CHARS})
        AND (email IS NULL OR char_length(email) <= {MAX_EMAIL_CHARS}))
);
REVOKE ALL ON public.export_tenant_settings FROM {APP_ROLE};
CREATE UNIQUE INDEX IF NOT EXISTS export_requests_monthly_idx
    ON public.export_requests (tenant_id, resource, export_id) WHERE origin = 'monthly';
"""

# The channel a new or re-opened pending row is announced on: the request submitter
# (orchestration/submitter.py) LISTENs and starts its run at once, instead of at the request
# sensor's next tick (Dagster evaluates sensors every 5 s at best).
PENDING_CHANNEL = "export_requests_pending"
PENDING_NOTIFY = f"""
CREATE OR REPLACE FUNCTION public.export_requests_notify_pending() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('{PENDING_CHANNEL}', '');  -- one per transaction: equal payloads fold
    RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS export_requests_notify_pending ON public.export_requests;
CREATE TRIGGER export_requests_notify_pending AFTER INSERT OR UPDATE OF status ON public.export_requests
    FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION public.export_requests_notify_pending();
"""

# Every status a request row takes, with the time: written by a trigger, whatever the door or the
# process (API, sensors, ops, an app's own SQL), so the lifecycle can be read back (operators,
# tests). And a guard: a canceled row stays canceled within its attempt (no `succeeded`, `failed`
# or `running` after `canceled`, whatever a late op or a run retry does); only a new attempt (a
# monthly partition run again by a backfill, attempt + 1) may take the row on again.
CANCELED_SQLSTATE = "EX409"
STATUS_HISTORY = f"""
CREATE TABLE IF NOT EXISTS public.export_request_status_history (
    id           bigserial PRIMARY KEY,
    request_id   uuid NOT NULL,
    attempt      int NOT NULL,
    from_status  text,                           -- NULL: the row was inserted
    to_status    text NOT NULL,
    run_id       text,
    at           timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS export_request_status_history_request_idx
    ON public.export_request_status_history (request_id, id);
REVOKE ALL ON public.export_request_status_history FROM {APP_ROLE};
CREATE OR REPLACE FUNCTION public.export_requests_status_history() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status OR NEW.attempt <> OLD.attempt THEN
        INSERT INTO public.export_request_status_history (request_id, attempt, from_status, to_status,
                                                           run_id)
        VALUES (NEW.id, NEW.attempt, CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
                NEW.run_id);
    END IF;
    RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS export_requests_status_history ON public.export_requests;
CREATE TRIGGER export_requests_status_history AFTER INSERT OR UPDATE OF status, attempt
    ON public.export_requests FOR EACH ROW EXECUTE FUNCTION public.export_requests_status_history();
CREATE OR REPLACE FUNCTION public.export_requests_canceled_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF OLD.status = 'canceled' AND NEW.status <> 'canceled' AND NEW.attempt <= OLD.attempt THEN
        RAISE EXCEPTION 'export % was canceled: it cannot become %', OLD.id, NEW.status
            USING ERRCODE = '{CANCELED_SQLSTATE}';
    END IF;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS export_requests_canceled_guard ON public.export_requests;
CREATE TRIGGER export_requests_canceled_guard BEFORE UPDATE OF status ON public.export_requests
    FOR EACH ROW WHEN (OLD.status = 'canceled') EXECUTE FUNCTION public.export_requests_canceled_guard();
"""

# What the metrics count that no other column keeps (`export-pipelines metrics`): requests a cap
# refused, per reason (core/requests/refusals.py; a refused insert leaves no row), and deliveries'
# failed attempts. In the database, so counts survive restarts and add up over every process.
METRICS_COUNTERS = f"""
CREATE TABLE IF NOT EXISTS public.export_refusals (
    reason      text PRIMARY KEY,
    refused     bigint NOT NULL DEFAULT 0,
    last_at     timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON public.export_refusals FROM {APP_ROLE};
-- Attempts of a delivery that did not deliver (retried or given up), counted when known: `attempts`
-- also counts an attempt still in flight, so it cannot tell failures on its own.
ALTER TABLE public.export_deliveries ADD COLUMN IF NOT EXISTS failed_attempts int NOT NULL DEFAULT 0;
"""

# Request rows for tenants the catalog's tenants table does not list are refused at insert, for every
# door: `export-pipelines migrate` records which table that is (export_tenant_source, one row); with
# no row recorded (a catalog without a tenants table) nothing is refused. The lookup is by the
# table's key, one index probe per insert.
TENANT_SOURCE = f"""
CREATE TABLE IF NOT EXISTS public.export_tenant_source (
    one          boolean PRIMARY KEY DEFAULT true CHECK (one),
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    key_column   text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON public.export_tenant_source FROM {APP_ROLE};
CREATE OR REPLACE FUNCTION public.export_requests_known_tenant() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $fn$
DECLARE
    src record;
    listed boolean;
BEGIN
    SELECT * INTO src FROM public.export_tenant_source;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE %I::text = $1)',
                   src.table_schema, src.table_name, src.key_column)
        INTO listed USING NEW.tenant_id;
    IF NOT listed THEN
        RAISE EXCEPTION USING
            ERRCODE = '{UNKNOWN_TENANT_SQLSTATE}',
            MESSAGE = format('tenant_id %s is not a tenant (not in %I.%I.%I)',
                             quote_literal(left(NEW.tenant_id, 100)), src.table_schema, src.table_name,
                             src.key_column);
    END IF;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS export_requests_known_tenant ON public.export_requests;
CREATE TRIGGER export_requests_known_tenant BEFORE INSERT OR UPDATE OF tenant_id ON public.export_requests
    FOR EACH ROW EXECUTE FUNCTION public.export_requests_known_tenant();
"""

# Tenants' feeds (core/requests/feed_store.py) and what makes an export_requests row a feed's
# delivery: feed_id and sequence (not in the app role's grant: only the service makes deliveries),
# whether it was asked to be full, and what the next delivery starts from (docs/feeds.md).
FEEDS = f"""
CREATE TABLE IF NOT EXISTS public.export_feeds (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id              text NOT NULL,
    resource               text NOT NULL,
    format                 text NOT NULL DEFAULT 'csv',
    compression            text,
    columns                text[],
    filters                jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    frequency              text NOT NULL
                           CHECK (frequency IN ('hourly', 'daily', 'weekly', 'monthly', 'manual')),
    mode                   text NOT NULL DEFAULT 'incremental' CHECK (mode IN ('incremental', 'full')),
    webhook_url            text,
    email                  text,
    origin                 text NOT NULL DEFAULT 'tenant' CHECK (origin IN ('tenant', 'enterprise_default')),
    full_refresh_pending   boolean NOT NULL DEFAULT false,
    next_due_at            timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_feeds_size_check CHECK (
        char_length(tenant_id) <= {MAX_TENANT_ID_CHARS}
        AND octet_length(filters::text) <= {MAX_FILTERS_BYTES}
        AND (columns IS NULL OR cardinality(columns) <= {MAX_COLUMNS})
        AND (webhook_url IS NULL OR char_length(webhook_url) <= {MAX_WEBHOOK_URL_CHARS})
        AND (email IS NULL OR char_length(email) <= {MAX_EMAIL_CHARS}))
);
CREATE INDEX IF NOT EXISTS export_feeds_tenant_idx ON public.export_feeds (tenant_id, created_at);
CREATE INDEX IF NOT EXISTS export_feeds_due_idx ON public.export_feeds (next_due_at)
    WHERE next_due_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS export_feeds_enterprise_idx
    ON public.export_feeds (tenant_id, resource) WHERE origin = 'enterprise_default';
REVOKE ALL ON public.export_feeds FROM {APP_ROLE};
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS feed_id uuid;
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS sequence int;
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS feed_full_refresh boolean NOT NULL DEFAULT false;
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS feed_record jsonb;
CREATE UNIQUE INDEX IF NOT EXISTS export_requests_feed_sequence_idx
    ON public.export_requests (feed_id, sequence) WHERE feed_id IS NOT NULL;
-- One delivery of a feed at a time: two from the same previous snapshot would race.
CREATE UNIQUE INDEX IF NOT EXISTS export_requests_feed_active_idx
    ON public.export_requests (feed_id)
    WHERE feed_id IS NOT NULL AND status IN ('pending', 'queued', 'running');
"""

# Tenants' own destinations (core/delivery/destinations/destination_store.py). Credentials are a
# Fernet token (EXPORT_SECRETS_KEY), never plain; a deleted destination keeps its row (deleted_at,
# credentials wiped) so an export that still names it fails as destination_not_found.
DESTINATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS public.export_destinations (
    id                       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id                text NOT NULL,
    kind                     text NOT NULL,
    name                     text NOT NULL,
    config                   jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    credentials              bytea,
    credentials_fingerprint  text,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    deleted_at               timestamptz,
    CONSTRAINT export_destinations_kind_check CHECK (kind IN ('link', 's3', 'azure_blob', 'gcs', 'sftp')),
    CONSTRAINT export_destinations_size_check CHECK (
        char_length(tenant_id) <= {MAX_TENANT_ID_CHARS} AND char_length(name) <= 200
        AND octet_length(config::text) <= 16384)
);
CREATE UNIQUE INDEX IF NOT EXISTS export_destinations_name_idx
    ON public.export_destinations (tenant_id, name) WHERE deleted_at IS NULL;
REVOKE ALL ON public.export_destinations FROM {APP_ROLE};
ALTER TABLE public.export_requests ADD COLUMN IF NOT EXISTS destination_id uuid;
"""

MIGRATIONS = (
    REQUESTS_TABLE,
    CHECKPOINT_TABLES,
    DELIVERIES_TABLE,
    TRUST_BOUNDARY,
    API_TABLES,
    TENANT_SETTINGS_TABLE,
    PENDING_NOTIFY,
    STATUS_HISTORY,
    METRICS_COUNTERS,
    TENANT_SOURCE,
    FEEDS,
    DESTINATIONS_TABLE,
)

_migrated: set[str] = set()
_migrated_lock = threading.Lock()


def migrate(
    conninfo: str,
    *,
    tenant_max_active: int | None = None,
    tenant_source: tuple[str, str, str] | None = None,
) -> None:
    """Bring every table up to date, in one transaction. Concurrent first runs (setup, tests, a
    sensor's first tick) wait on the same transaction-scoped advisory lock instead of racing on
    CREATE; the lock ends with the transaction, even if the connection dies.

    `tenant_max_active` (Settings.tenant_max_active, EXPORT_TENANT_MAX_ACTIVE) is written to
    export_limits, where the insert trigger reads it; None leaves the stored value.
    `tenant_source` (schema, table, key column of the catalog's tenants table) is recorded for the
    insert trigger that refuses unknown tenants; None leaves what is recorded."""
    with open_connection(conninfo, options="-c statement_timeout=60s") as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('export_pipelines_migrations'))")
        for statement in MIGRATIONS:
            conn.execute(statement)
        if tenant_max_active is not None:
            set_tenant_max_active(conn, tenant_max_active)
        if tenant_source is not None:
            set_tenant_source(conn, tenant_source)


def set_tenant_source(conn: psycopg.Connection[Any], source: tuple[str, str, str] | None) -> None:
    """Record the tenants table (schema, table, key column) the insert trigger checks tenant ids
    against; None: check nothing."""
    conn.execute("DELETE FROM public.export_tenant_source")
    if source is not None:
        conn.execute(
            "INSERT INTO public.export_tenant_source (table_schema, table_name, key_column) "
            "VALUES (%s, %s, %s)",
            list(source),
        )


def set_tenant_max_active(conn: psycopg.Connection[Any], value: int) -> None:
    """Store the per-tenant cap of active requests the insert trigger enforces."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"EXPORT_TENANT_MAX_ACTIVE: must be a whole number of at least 1, got {value!r}")
    conn.execute(
        """
        INSERT INTO public.export_limits (name, value) VALUES ('tenant_max_active', %s)
        ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = now()
        WHERE export_limits.value IS DISTINCT FROM excluded.value
        """,
        [value],
    )


def migrate_once(conninfo: str) -> None:
    """`migrate` on first use of a database in this process (a sensor may tick before anyone ran
    `export-pipelines migrate`)."""
    with _migrated_lock:
        if conninfo not in _migrated:
            migrate(conninfo)
            _migrated.add(conninfo)
