"""The `export_requests` table and everything the database enforces on it for every door: the
sizes a row may carry, the per-tenant cap and the unknown-tenant refusal (insert triggers, with
their SQLSTATEs), the app role's grant, the pending notice, the status history and the canceled
guard. The constants here are the one source of those bounds (core/storage/pg_errors.py words them).
"""

from __future__ import annotations

from typing import Any

import psycopg

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

# The channel a new or re-opened pending row is announced on: the request submitter
# (orchestration/submitter.py) LISTENs and starts its run at once, instead of at the request
# sensor's next tick (Dagster evaluates sensors every 5 s at best).
PENDING_CHANNEL = "export_requests_pending"
# A session or transaction that sets this to 'on' announces its pending rows itself, after they
# commit (the API's connections, and its doorbell): PostgreSQL serialises the commits of every
# transaction that notified, across the cluster, each holding that lock through its WAL flush, which
# capped the API's creates near 1/fsync per second and queued them behind each other.
NOTIFY_AFTER_COMMIT_SETTING = "export_pipelines.notify_after_commit"
PENDING_NOTIFY = f"""
CREATE OR REPLACE FUNCTION public.export_requests_notify_pending() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_setting('{NOTIFY_AFTER_COMMIT_SETTING}', true) = 'on' THEN
        RETURN NULL;
    END IF;
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
