"""How each output format makes its bytes. Adding a format is one entry in core/formats.py (its
metadata), one new module here, and one line in `_ENCODERS`."""

from __future__ import annotations

from export_pipelines.core.encoders.base import Encoder
from export_pipelines.core.encoders.csv import CsvEncoder
from export_pipelines.core.encoders.csv_excel import CsvExcelEncoder
from export_pipelines.core.encoders.json_array import JsonArrayEncoder
from export_pipelines.core.encoders.jsonl import JsonlEncoder
from export_pipelines.core.encoders.parquet import ParquetEncoder
from export_pipelines.core.encoders.pdf import PdfEncoder
from export_pipelines.core.encoders.xlsx import XlsxEncoder

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


__all__ = ["Encoder", "encoder_class"]
