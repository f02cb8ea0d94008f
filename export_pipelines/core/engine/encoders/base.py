"""The encoder interface: one module per output format, registered in `encoders/__init__.py`.

An encoder turns the rows of one file into bytes. The exporter feeds it batches from the
reader its `input_kind` asks for, and cuts S3 parts from the bytes it returns:
- `resumable` encoders (CSV) make every part self-contained (`cut()` closes a gzip member), so a
  part boundary is a clean restart point for a crashed export;
- the others (Parquet, XLSX) are cut anywhere; the file is their unit of restart.
Text formats let PostgreSQL render values (`render_query`), so Python touches bytes, not values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.engine.query import ExportQuery
from export_pipelines.core.formats import FormatSpec

InputKind = Literal["pg_csv", "arrow"]


class Encoder(ABC):
    spec: ClassVar[FormatSpec]  # the format's metadata (core/formats.py); set by each format
    input_kind: ClassVar[InputKind]
    # Copied from `spec` for each format class, so callers can ask the class directly.
    format: ClassVar[str]
    compressions: ClassVar[tuple[str, ...]]
    default_compression: ClassVar[str]
    resumable: ClassVar[bool]
    # CSV input in chunks of about this many bytes (None: the source's ~1 MiB). Encoders that take
    # seconds per MiB (PDF, XLSX) ask for smaller ones, so progress moves within a few thousand rows.
    input_chunk_bytes: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            cls.format = cls.spec.name
            cls.compressions = cls.spec.compressions
            cls.default_compression = cls.spec.default_compression
            cls.resumable = cls.spec.resumable

    def __init__(self, columns: list[ColumnInfo], compression: str) -> None:
        self.columns = columns
        self.compression = compression

    @property
    def extension(self) -> str:
        """File name extension, e.g. 'csv.gz'."""
        return self.spec.extensions[self.compression]

    @property
    def content_type(self) -> str:
        return self.spec.content_types[self.compression]

    @classmethod
    def render_query(cls, query: ExportQuery) -> ExportQuery:
        """The query this format reads: by default the columns as they are stored."""
        return query

    def output_types(self) -> dict[str, str]:
        """Column name -> how the column is represented in this format (for the manifest)."""
        return {c.name: "text" for c in self.columns}

    def special_counts(self) -> dict[str, dict[str, int]]:
        """Special values this encoder counted itself ({column: {key: count}}, no zeros): the
        ones only the encoder can see (PDF's wrapped-lines cut), and those of `stream_counted`.
        PostgreSQL counts the rest."""
        return {}

    @classmethod
    def stream_counted(cls, columns: list[ColumnInfo]) -> frozenset[tuple[str, str]]:
        """(column, key) pairs this encoder counts in the rows it writes, for free, so the file's
        count query leaves them out (PostgreSQL still counts them when rows an earlier attempt
        wrote are recounted)."""
        return frozenset()

    def describe(self, context: dict[str, str]) -> None:  # noqa: B027 - optional hook
        """Facts about the export (tenant, resource, filters, generated_at) for formats that print
        them (PDF's title); others ignore them."""

    @abstractmethod
    def begin(self) -> bytes:
        """Bytes that open a file (e.g. the CSV header)."""

    @abstractmethod
    def encode(self, batch: Any) -> bytes:
        """Encode one batch of rows; return the bytes ready so far (may be empty)."""

    def resume(self) -> bytes:
        """Continue a file whose earlier parts are already written (resumable encoders only):
        the bytes that follow must equal what an uninterrupted run writes after a cut."""
        return b""

    def cut(self) -> bytes:
        """Close the current self-contained unit at a part boundary (resumable encoders)."""
        return b""

    @abstractmethod
    def finish(self) -> bytes:
        """Bytes that close the file."""


def split_complete_records(data: str) -> tuple[str, str]:
    """(the leading complete CSV records of `data`, the unfinished rest). COPY chunks end at record
    boundaries in practice; a quoted newline must not be taken for one."""
    if data.endswith("\n") and data.count('"') % 2 == 0:
        return data, ""
    in_quotes, end = False, 0
    for i, ch in enumerate(data):
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == "\n" and not in_quotes:
            end = i + 1
    return data[:end], data[end:]
