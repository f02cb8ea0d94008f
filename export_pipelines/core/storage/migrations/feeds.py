"""Tenants' feeds (`export_feeds`) and the `export_requests` columns that make a row a feed's
delivery (docs/feeds.md)."""

from __future__ import annotations

from export_pipelines.core.storage.migrations.request_table import (
    APP_ROLE,
    MAX_COLUMNS,
    MAX_EMAIL_CHARS,
    MAX_FILTERS_BYTES,
    MAX_TENANT_ID_CHARS,
    MAX_WEBHOOK_URL_CHARS,
)

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

# A feed may name a destination of its tenant (docs/feeds.md); its deliveries carry it on their
# export_requests rows. Added after DESTINATIONS_TABLE, as an existing database was migrated.
FEED_DESTINATION = """
ALTER TABLE public.export_feeds ADD COLUMN IF NOT EXISTS destination_id uuid;
CREATE INDEX IF NOT EXISTS export_feeds_destination_idx ON public.export_feeds (destination_id)
    WHERE destination_id IS NOT NULL;
"""
