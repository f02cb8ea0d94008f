"""Checkpoints: what an export has durably uploaded, so a retried run resumes instead of restarting.

Three tables in the source database, next to export_requests, keyed by the export's S3 folder
(which is the same for every retry of one export: run retry, op retry, re-executed partition,
re-request of the same row):
- `export_checkpoints`: the cut fixed when the export was planned (fingerprint of the request,
  high-water mark, row count). A retry reuses it, so rows added meanwhile stay out.
- `export_checkpoint_files`: one row per file: its multipart upload (id, plus a token that is
  also put in the object's metadata, so a completed upload can be recognised after a crash),
  where its reader started, and once complete its totals.
- `export_checkpoint_parts`: one row per uploaded part: ETag, SHA-256 and size, and where the
  reader stood after it (rows in the file, last key, next batch size): enough to continue the
  file with the bytes an uninterrupted run would have written.
Keys are stored as PostgreSQL text and cast back to the key column's type when read. The schema is
in core/storage/migrations/checkpoints.py.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from psycopg import sql

from export_pipelines.core.storage.pg_store import PgStore


@dataclass(frozen=True)
class Cut:
    """The rows an export covers, fixed at plan time."""

    fingerprint: str
    rows_total: int
    high_water_mark: Any
    planned_at: float | None = None  # the first attempt's plan time (a PDF's "generated at")


@dataclass(frozen=True)
class PartCheckpoint:
    number: int
    etag: str
    checksum_sha256: str
    size: int
    rows_in_file: int  # rows in the file up to and including this part
    first_key: Any  # first key of the file (so far)
    last_key: Any  # the reader continues after this key
    next_batch_rows: int  # and asks for this many rows next


@dataclass
class FileCheckpoint:
    number: int
    fingerprint: str
    key: str
    upload_id: str | None
    upload_token: str
    part_size: int
    start_after: Any
    start_batch_rows: int
    snapshot: str
    status: str
    rows: int = 0
    bytes: int = 0
    parts_count: int = 0
    sha256: str = ""
    first_key: Any = None
    last_key: Any = None
    parts: list[PartCheckpoint] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def _key_text(value: Any) -> str | None:
    return None if value is None else str(value)


class CheckpointStore(PgStore):
    """Reads and writes of the checkpoint tables, on the store's one connection (one export, one
    thread)."""

    # -- the cut -------------------------------------------------------------------------

    def cut(self, folder: str, key_type: str) -> Cut | None:
        row = self.execute(
            sql.SQL(
                "SELECT fingerprint, rows_total, high_water_mark::{}, planned_at FROM export_checkpoints "
                "WHERE folder = %s"
            ).format(sql.SQL(key_type)),  # type: ignore[arg-type]  # format_type() output
            [folder],
        ).fetchone()
        return Cut(row[0], int(row[1]), row[2], row[3]) if row else None

    def save_cut(self, folder: str, cut: Cut) -> None:
        """Start (or start over) the export in `folder`: a new cut replaces an old one only when
        the request changed; files checkpointed for another fingerprint are then stale."""
        self.execute(
            """
            INSERT INTO export_checkpoints (folder, fingerprint, rows_total, high_water_mark, planned_at)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (folder) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
                rows_total = EXCLUDED.rows_total, high_water_mark = EXCLUDED.high_water_mark,
                planned_at = EXCLUDED.planned_at, updated_at = now()
            """,
            [folder, cut.fingerprint, cut.rows_total, _key_text(cut.high_water_mark), cut.planned_at],
        )

    def claim(self, folder: str) -> None:
        """Record this process as the export's worker."""
        self.execute(
            "UPDATE export_checkpoints SET worker = %s, updated_at = now() WHERE folder = %s",
            [f"{socket.gethostname()}:{os.getpid()}", folder],
        )

    def prune(self, older_than: timedelta) -> int:
        """Forget exports nobody has touched for `older_than` (never retried, never finished):
        their uploads are long aborted by then, so the checkpoint could only restart files."""
        cur = self.execute(
            """
            DELETE FROM export_checkpoints c
            WHERE c.updated_at < now() - %s
              AND NOT EXISTS (SELECT 1 FROM export_checkpoint_files f
                              WHERE f.folder = c.folder AND f.updated_at >= now() - %s)
            """,
            [older_than, older_than],
        )
        return cur.rowcount

    def forget(self, folder: str) -> None:
        """The export is finished (manifest and _SUCCESS written): a later run starts afresh."""
        self.execute("DELETE FROM export_checkpoints WHERE folder = %s", [folder])

    # -- files and parts ----------------------------------------------------------------

    def files(self, folder: str, key_type: str) -> list[FileCheckpoint]:
        kt = sql.SQL(key_type)  # type: ignore[arg-type]
        files = {
            r[0]: FileCheckpoint(
                number=r[0],
                fingerprint=r[1],
                key=r[2],
                upload_id=r[3],
                upload_token=r[4],
                part_size=int(r[5]),
                start_after=r[6],
                start_batch_rows=int(r[7]),
                snapshot=r[8],
                status=r[9],
                rows=int(r[10] or 0),
                bytes=int(r[11] or 0),
                parts_count=int(r[12] or 0),
                sha256=r[13] or "",
                first_key=r[14],
                last_key=r[15],
            )
            for r in self.execute(
                sql.SQL(
                    "SELECT file_number, fingerprint, object_key, upload_id, upload_token, part_size, "
                    "start_after::{kt}, start_batch_rows, snapshot, status, rows, bytes, parts, sha256, "
                    "first_key::{kt}, last_key::{kt} FROM export_checkpoint_files WHERE folder = %s "
                    "ORDER BY file_number"
                ).format(kt=kt),
                [folder],
            )
        }
        for r in self.execute(
            sql.SQL(
                "SELECT file_number, part_number, etag, checksum_sha256, size, rows_in_file, "
                "first_key::{kt}, last_key::{kt}, next_batch_rows FROM export_checkpoint_parts "
                "WHERE folder = %s ORDER BY file_number, part_number"
            ).format(kt=kt),
            [folder],
        ):
            files[r[0]].parts.append(
                PartCheckpoint(r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], r[7], int(r[8]))
            )
        return list(files.values())

    def start_file(self, folder: str, f: FileCheckpoint) -> None:
        with self.transaction() as cur:  # both statements in one transaction
            cur.execute(
                "DELETE FROM export_checkpoint_files WHERE folder = %s AND file_number >= %s",
                [folder, f.number],
            )
            cur.execute(
                """
                INSERT INTO export_checkpoint_files (folder, file_number, fingerprint, object_key,
                    upload_id, upload_token, part_size, start_after, start_batch_rows, snapshot)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                """,
                [
                    folder,
                    f.number,
                    f.fingerprint,
                    f.key,
                    f.upload_id,
                    f.upload_token,
                    f.part_size,
                    _key_text(f.start_after),
                    f.start_batch_rows,
                    f.snapshot,
                ],
            )

    def set_upload(self, folder: str, number: int, upload_id: str) -> None:
        self.execute(
            "UPDATE export_checkpoint_files SET upload_id = %s, updated_at = now() "
            "WHERE folder = %s AND file_number = %s",
            [upload_id, folder, number],
        )

    def record_part(self, folder: str, file_number: int, part: PartCheckpoint) -> None:
        self.execute(
            """
            INSERT INTO export_checkpoint_parts (folder, file_number, part_number, etag,
                checksum_sha256, size, rows_in_file, first_key, last_key, next_batch_rows)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (folder, file_number, part_number) DO UPDATE SET etag = EXCLUDED.etag,
                checksum_sha256 = EXCLUDED.checksum_sha256, size = EXCLUDED.size,
                rows_in_file = EXCLUDED.rows_in_file, first_key = EXCLUDED.first_key,
                last_key = EXCLUDED.last_key, next_batch_rows = EXCLUDED.next_batch_rows
            """,
            [
                folder,
                file_number,
                part.number,
                part.etag,
                part.checksum_sha256,
                part.size,
                part.rows_in_file,
                _key_text(part.first_key),
                _key_text(part.last_key),
                part.next_batch_rows,
            ],
        )

    def complete_file(self, folder: str, f: FileCheckpoint) -> None:
        self.execute(
            """
            UPDATE export_checkpoint_files SET status = 'complete', upload_id = NULL, rows = %s,
                bytes = %s, parts = %s, sha256 = %s, first_key = %s, last_key = %s,
                snapshot = %s, updated_at = now()
            WHERE folder = %s AND file_number = %s
            """,
            [
                f.rows,
                f.bytes,
                f.parts_count,
                f.sha256,
                _key_text(f.first_key),
                _key_text(f.last_key),
                f.snapshot,
                folder,
                f.number,
            ],
        )

    def drop_files_from(self, folder: str, number: int) -> None:
        """Forget file `number` and later ones (their uploads are gone or being restarted)."""
        self.execute(
            "DELETE FROM export_checkpoint_files WHERE folder = %s AND file_number >= %s", [folder, number]
        )

    def drop_open_files(self, folder: str) -> None:
        self.execute(
            "DELETE FROM export_checkpoint_files WHERE folder = %s AND status = 'uploading'", [folder]
        )
