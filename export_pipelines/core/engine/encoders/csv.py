"""CSV (RFC 4180, UTF-8, header row) from PostgreSQL's own COPY ... (FORMAT csv) output.

PostgreSQL renders every value (numeric exactly, timestamptz in UTC, jsonb, arrays) and quotes
it; we only add the header and compress. NULL is an empty unquoted field and the empty string
is `""`, so the two stay distinct. bytea is the one column PostgreSQL renders differently for
us: base64 (in SQL) instead of its hex escape. With gzip or zstd, each S3 part is one gzip member
or whole zstd frames (concatenated members/frames are a valid file), which makes every part
independently re-makeable.
"""

from __future__ import annotations

from export_pipelines.core.engine.encoders.compress import CompressedTextEncoder
from export_pipelines.core.engine.encoders.render_sql import base64_of, column_ref
from export_pipelines.core.engine.query import ExportQuery, RenderedQuery
from export_pipelines.core.formats import format_spec


class CsvEncoder(CompressedTextEncoder):
    spec = format_spec("csv")

    @classmethod
    def render_query(cls, query: ExportQuery) -> ExportQuery:
        columns = [query.types[c] for c in query.request.columns]
        if not any(c.type_name == "bytea" for c in columns):
            return query  # the columns as they are: COPY's bytes, untouched
        expressions = tuple(
            base64_of(column_ref(c)) if c.type_name == "bytea" else column_ref(c) for c in columns
        )
        return RenderedQuery(query.spec, query.request, query.types, expressions=expressions)

    def begin(self) -> bytes:
        # Catalog columns are plain identifiers, so the header needs no quoting.
        header = ",".join(c.name for c in self.columns) + "\n"
        return self.compressor.write(header.encode())
