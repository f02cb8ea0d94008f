"""JSON Lines: one JSON object per row, keys in column order, rendered by PostgreSQL.

`row_to_json` writes every value (numbers with their exact digits, timestamps in ISO 8601,
arrays, nested jsonb) and escapes every control character, so each object is one line; COPY
hands the lines over as they are (`RenderedQuery.json_rows`). Python only compresses: gzip
members or zstd frames per part, as for CSV.
"""

from __future__ import annotations

from typing import Any

from export_pipelines.core.encoders.base import Encoder
from export_pipelines.core.encoders.compress import CONTENT_TYPE, SUFFIX, Compressor
from export_pipelines.core.query import ExportQuery, RenderedQuery
from export_pipelines.core.render_sql import json_value


def json_rows_query(query: ExportQuery) -> RenderedQuery:
    columns = [query.types[c] for c in query.request.columns]
    return RenderedQuery(
        query.spec,
        query.request,
        query.types,
        expressions=tuple(json_value(c) for c in columns),
        json_rows=True,
    )


class JsonlEncoder(Encoder):
    format = "jsonl"
    input_kind = "pg_csv"
    compressions = ("gzip", "zstd", "none")
    default_compression = "gzip"
    resumable = True
    media_type = "application/x-ndjson"

    def __init__(self, columns: Any, compression: str) -> None:
        super().__init__(columns, compression)
        self._compressor = Compressor(compression)

    @property
    def extension(self) -> str:
        return self.format + SUFFIX[self.compression]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPE.get(self.compression, self.media_type)

    @classmethod
    def render_query(cls, query: ExportQuery) -> ExportQuery:
        return json_rows_query(query)

    def begin(self) -> bytes:
        return b""

    def resume(self) -> bytes:
        self._compressor.continue_file()
        return b""

    def encode(self, batch: bytes | memoryview) -> bytes:
        return self._compressor.write(batch)

    def cut(self) -> bytes:
        return self._compressor.cut()

    def finish(self) -> bytes:
        return self._compressor.finish()
