"""The counters `export-pipelines metrics` reads that no other column keeps."""

from __future__ import annotations

from export_pipelines.core.storage.migrations.request_table import APP_ROLE

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
