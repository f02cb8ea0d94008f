"""Which encoder writes each format. Adding a format is one entry in core/formats.py (its
metadata), one new module in this package, and one line in `_ENCODERS`."""

from __future__ import annotations

from export_pipelines.core.engine.encoders.base import Encoder
from export_pipelines.core.engine.encoders.csv import CsvEncoder
from export_pipelines.core.engine.encoders.csv_excel import CsvExcelEncoder
from export_pipelines.core.engine.encoders.json_array import JsonArrayEncoder
from export_pipelines.core.engine.encoders.jsonl import JsonlEncoder
from export_pipelines.core.engine.encoders.parquet import ParquetEncoder
from export_pipelines.core.engine.encoders.pdf import PdfEncoder
from export_pipelines.core.engine.encoders.xlsx import XlsxEncoder

_ENCODERS: dict[str, type[Encoder]] = {
    cls.format: cls
    for cls in (
        CsvEncoder,
        CsvExcelEncoder,
        JsonlEncoder,
        JsonArrayEncoder,
        ParquetEncoder,
        XlsxEncoder,
        PdfEncoder,
    )
}


def encoder_class(fmt: str) -> type[Encoder]:
    return _ENCODERS[fmt]
