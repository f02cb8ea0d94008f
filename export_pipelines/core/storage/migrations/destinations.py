"""Tenants' own destinations (`export_destinations`) and the request column that names one."""

from __future__ import annotations

from export_pipelines.core.storage.migrations.request_table import APP_ROLE, MAX_TENANT_ID_CHARS

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
