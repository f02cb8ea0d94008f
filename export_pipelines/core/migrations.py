"""The project's tables in the source database, created and upgraded by one idempotent `migrate`.

- `export_requests`: the queue apps write to and the status they read (core/request_store.py).
- `export_checkpoints`, `export_checkpoint_files`, `export_checkpoint_parts`: what an export has
  durably uploaded, so a retry resumes (core/checkpoints.py).
- `export_deliveries`: notifications waiting to be sent, sent, or given up (core/delivery_store.py).

Each statement may run again (IF NOT EXISTS), so migrating an up-to-date database changes nothing.
"""

from __future__ import annotations

import threading

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
    payload          jsonb NOT NULL,            -- the webhook body (README "Notifications")
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

MIGRATIONS = (REQUESTS_TABLE, CHECKPOINT_TABLES, DELIVERIES_TABLE)

_migrated: set[str] = set()
_migrated_lock = threading.Lock()


def migrate(conninfo: str) -> None:
    """Bring every table up to date, in one transaction. Concurrent first runs (setup, tests, a
    sensor's first tick) wait on the same transaction-scoped advisory lock instead of racing on
    CREATE; the lock ends with the transaction, even if the connection dies."""
    with psycopg.connect(conninfo, options="-c statement_timeout=60s") as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('export_pipelines_migrations'))")
        for statement in MIGRATIONS:
            conn.execute(statement)


def migrate_once(conninfo: str) -> None:
    """`migrate` on first use of a database in this process (a sensor may tick before anyone ran
    `export-pipelines migrate`)."""
    with _migrated_lock:
        if conninfo not in _migrated:
            migrate(conninfo)
            _migrated.add(conninfo)
