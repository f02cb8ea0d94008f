"""JSON Lines: one JSON object per row, keys in column order, rendered by PostgreSQL.

`row_to_json` writes every value (bigint, numeric and floats as strings of their exact text,
timestamps in ISO 8601, arrays, nested jsonb; `render_sql.json_value`)
and escapes every control character, so each object is one line; COPY
hands the lines over as they are (`RenderedQuery.json_rows`). Python only compresses: gzip
members or zstd frames per part, as for CSV.
"""

from __future__ import annotations

from export_pipelines.core.engine.encoders.compress import CompressedTextEncoder
from export_pipelines.core.engine.encoders.render_sql import json_value
from export_pipelines.core.engine.query import ExportQuery, RenderedQuery
from export_pipelines.core.formats import format_spec


def json_rows_query(query: ExportQuery) -> RenderedQuery:
    columns = [query.types[c] for c in query.request.columns]
    return RenderedQuery(
        query.spec,
        query.request,
        query.types,
        expressions=tuple(json_value(c) for c in columns),
        json_rows=True,
    )


class JsonlEncoder(CompressedTextEncoder):
    spec = format_spec("jsonl")

    @classmethod
    def render_query(cls, query: ExportQuery) -> ExportQuery:
        return json_rows_query(query)

    def begin(self) -> bytes:
        return b""
