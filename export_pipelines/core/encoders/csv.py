"""CSV (RFC 4180, UTF-8, header row) from PostgreSQL's own COPY ... (FORMAT csv) output.

PostgreSQL renders every value (numeric exactly, timestamptz in UTC, jsonb, arrays, bytea as
hex) and quotes it; we only add the header and compress. NULL is an empty unquoted field and the
empty string is `""`, so the two stay distinct. With gzip, each S3 part is one gzip member
(concatenated members are a valid .gz file), which makes every part independently re-makeable.
"""

from __future__ import annotations

import zlib
from typing import Any

from export_pipelines.core.encoders.base import Encoder

# gzip -1: the speed reference; zlib releases the GIL, so this overlaps the database read.
GZIP_LEVEL = 1


class CsvEncoder(Encoder):
    format = "csv"
    input_kind = "pg_csv"
    compressions = ("gzip", "none")
    default_compression = "gzip"
    resumable = True
    media_type = "text/csv; charset=utf-8"

    def __init__(self, columns: Any, compression: str) -> None:
        super().__init__(columns, compression)
        self._z: Any = None

    @property
    def extension(self) -> str:
        return "csv.gz" if self.compression == "gzip" else "csv"

    @property
    def content_type(self) -> str:
        # No Content-Encoding: the customer downloads the .gz file itself, not a decoded stream.
        return "application/gzip" if self.compression == "gzip" else self.media_type

    def _compress(self, data: bytes | memoryview) -> bytes:
        if self.compression == "none":
            return bytes(data)
        if self._z is None:
            self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip wrapper
        return self._z.compress(data)

    def begin(self) -> bytes:
        # Catalog columns are plain identifiers, so the header needs no quoting.
        header = ",".join(c.name for c in self.columns) + "\n"
        return self._compress(header.encode())

    def encode(self, batch: bytes | memoryview) -> bytes:
        return self._compress(batch)

    def cut(self) -> bytes:
        if self._z is None:
            return b""
        tail, self._z = self._z.flush(), None
        return tail

    def finish(self) -> bytes:
        return self.cut()
