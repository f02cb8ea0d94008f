"""CSV, `excel` profile (format `csv_excel`): a file that double-clicks into Excel safely.

What it changes against plain CSV (docs/formats.md):
- a UTF-8 byte order mark, so Excel reads UTF-8;
- CRLF between records (line breaks inside quoted values stay as they are);
- formula injection neutralised: a text value starting with `=`, `+`, `-`, `@`, tab or CR gets
  a leading `'`;
- numbers Excel would round or change (more than 15 significant digits, -0, NaN, ±Infinity,
  magnitudes below 1e-300) are written as `="…"`, which Excel shows as that exact text.
PostgreSQL renders all of that in SQL (`render_sql.excel_csv`); here we only turn record ends
into CRLF, tracking whether a newline sits inside a quoted value by counting quotes.
"""

from __future__ import annotations

from typing import Any

from export_pipelines.core.engine.encoders.csv import CsvEncoder
from export_pipelines.core.engine.encoders.render_sql import excel_csv
from export_pipelines.core.engine.query import ExportQuery, RenderedQuery
from export_pipelines.core.formats import format_spec

BOM = "\ufeff"


class CsvExcelEncoder(CsvEncoder):
    spec = format_spec("csv_excel")

    def __init__(self, columns: Any, compression: str) -> None:
        super().__init__(columns, compression)
        self._in_quotes = False  # quote parity carried across chunks

    @classmethod
    def render_query(cls, query: ExportQuery) -> ExportQuery:
        columns = [query.types[c] for c in query.request.columns]
        return RenderedQuery(
            query.spec, query.request, query.types, expressions=tuple(excel_csv(c) for c in columns)
        )

    def begin(self) -> bytes:
        header = BOM + ",".join(c.name for c in self.columns) + "\r\n"
        return self.compressor.write(header.encode())

    def encode(self, batch: bytes | memoryview) -> bytes:
        # Splitting on '"' alternates outside/inside quoted values ('""' escapes toggle twice).
        pieces = bytes(batch).split(b'"')
        first_outside = 1 if self._in_quotes else 0
        pieces[first_outside::2] = [p.replace(b"\n", b"\r\n") for p in pieces[first_outside::2]]
        if len(pieces) % 2 == 0:  # an odd number of quotes: the state flips
            self._in_quotes = not self._in_quotes
        return self.compressor.write(b'"'.join(pieces))
