"""What an export run reports: per-file results, progress events, the run's outcome, and the
finished export's links."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class FileResult:
    key: str
    rows: int = 0
    bytes: int = 0
    sha256: str = ""
    first_key: Any = None
    last_key: Any = None
    parts: int = 0
    snapshot: str = ""
    resumed_at_part: int | None = None  # continued by a later attempt from this part number
    # {column: {special-value key: count}}, zero counts left out (core/engine/encoders/special_values.py)
    special_values: dict[str, dict[str, int]] = field(default_factory=dict)
    # Some of its rows were written by an earlier attempt and counted again at this one's end.
    special_values_recounted: bool = False
    deletes: int = 0  # a feed delivery's rows with _op = 'delete'


@dataclass
class ExportProgress:
    rows_exported: int
    rows_total: int
    bytes_written: int
    parts_uploaded: int
    files_completed: int
    file_key: str


@dataclass
class ExportOutcome:
    files: list[FileResult]
    output_types: dict[str, str]
    seconds: float
    rows: int = field(init=False)
    bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = sum(f.rows for f in self.files)
        self.bytes = sum(f.bytes for f in self.files)


@dataclass(frozen=True)
class FileLink:
    key: str
    url: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class FinalizedExport:
    manifest_key: str
    manifest_url: str
    files: list[FileLink]
    expires_at: datetime
    rows: int
    bytes: int

    @property
    def download_url(self) -> str:
        """One link for the request row: the file, or the manifest when there are several files."""
        return self.files[0].url if len(self.files) == 1 else self.manifest_url
