"""What an export has durably uploaded (`export_checkpoints`, `export_checkpoint_files`,
`export_checkpoint_parts`), so a retry resumes (core/engine/checkpoints.py)."""

from __future__ import annotations

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
