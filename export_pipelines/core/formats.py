"""The output formats as data: names, extensions, compressions, restart unit and content type.

A leaf module without pyarrow: request validation and the CLI read it, and each encoder takes
its metadata from here instead of repeating it (encoders/ holds only how bytes are made).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ResumableAt = Literal["part", "file"]

# Text formats are compressed as a whole stream: the file name and content type say so.
_TEXT_COMPRESSIONS = ("gzip", "zstd", "none")
_SUFFIX = {"gzip": ".gz", "zstd": ".zst", "none": ""}
# No Content-Encoding: the customer downloads the .gz file itself, not a decoded stream.
_COMPRESSED_CONTENT_TYPE = {"gzip": "application/gzip", "zstd": "application/zstd"}


@dataclass(frozen=True)
class FormatSpec:
    name: str
    compressions: tuple[str, ...]  # the default first
    extensions: Mapping[str, str]  # compression -> file name extension, e.g. "csv.gz"
    content_types: Mapping[str, str]  # compression -> the object's Content-Type
    # "part": every S3 part is a clean restart point; "file": a crashed file starts again.
    resumable_at: ResumableAt

    @property
    def default_compression(self) -> str:
        return self.compressions[0]

    @property
    def resumable(self) -> bool:
        return self.resumable_at == "part"


def _text_format(
    name: str, extension: str, media_type: str, compressions: tuple[str, ...] = _TEXT_COMPRESSIONS
) -> FormatSpec:
    """Rows rendered as text, compressed in self-contained members per part: resumable at parts."""
    return FormatSpec(
        name=name,
        compressions=compressions,
        extensions={c: extension + _SUFFIX[c] for c in compressions},
        content_types={c: _COMPRESSED_CONTENT_TYPE.get(c, media_type) for c in compressions},
        resumable_at="part",
    )


def _container_format(name: str, media_type: str, compressions: tuple[str, ...]) -> FormatSpec:
    """A file format that compresses inside itself (Parquet, XLSX): one extension, restarts per file."""
    return FormatSpec(
        name=name,
        compressions=compressions,
        extensions=dict.fromkeys(compressions, name),
        content_types=dict.fromkeys(compressions, media_type),
        resumable_at="file",
    )


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        _text_format("csv", "csv", "text/csv; charset=utf-8"),
        # Excel opens a .csv, not a .csv.gz: uncompressed by default.
        _text_format("csv_excel", "csv", "text/csv; charset=utf-8", ("none", "gzip", "zstd")),
        _text_format("jsonl", "jsonl", "application/x-ndjson"),
        _text_format("json", "json", "application/json"),
        _container_format("parquet", "application/vnd.apache.parquet", ("zstd", "snappy", "none")),
        # An XLSX file is a ZIP archive already.
        _container_format(
            "xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ("none",)
        ),
        # A report for people; PDF compresses its streams inside the file.
        _container_format("pdf", "application/pdf", ("none",)),
    )
}


# A PDF is laid out whole, so its rows are held in memory: a cap keeps that bounded (and a report
# of more rows is for a machine format). Setting EXPORT_PDF_MAX_ROWS.
DEFAULT_PDF_MAX_ROWS = 10_000


def format_names() -> tuple[str, ...]:
    return tuple(FORMATS)


def format_spec(name: str) -> FormatSpec:
    return FORMATS[name]
