"""Which encoder writes each format. Adding a format is one entry in core/formats.py (its
metadata), one new module in this package, and one line in `_ENCODERS`.

Encoders are imported when their format is asked for, not when this module is: the Parquet
encoder brings pyarrow (~40 MB of a run process) and a CSV run must not pay for it."""

from __future__ import annotations

import importlib

from export_pipelines.core.engine.encoders.base import Encoder

_PACKAGE = "export_pipelines.core.engine.encoders"
_ENCODERS: dict[str, tuple[str, str]] = {
    "csv": ("csv", "CsvEncoder"),
    "csv_excel": ("csv_excel", "CsvExcelEncoder"),
    "jsonl": ("jsonl", "JsonlEncoder"),
    "json": ("json_array", "JsonArrayEncoder"),
    "parquet": ("parquet", "ParquetEncoder"),
    "xlsx": ("xlsx", "XlsxEncoder"),
    "pdf": ("pdf", "PdfEncoder"),
}


def encoder_class(fmt: str) -> type[Encoder]:
    module, name = _ENCODERS[fmt]
    cls: type[Encoder] = getattr(importlib.import_module(f"{_PACKAGE}.{module}"), name)
    return cls
