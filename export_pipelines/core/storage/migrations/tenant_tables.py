"""The tables beside the requests that serve tenants: notifications to deliver (`export_deliveries`),
the export API's keys with the request columns only the API writes (`export_api_keys`), and tenants'
default notify targets (`export_tenant_settings`)."""

from __future__ import annotations

from export_pipelines.core.storage.migrations.request_table import (
    APP_ROLE,
    MAX_EMAIL_CHARS,
    MAX_TENANT_ID_CHARS,
    MAX_WEBHOOK_URL_CHARS,
)

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
