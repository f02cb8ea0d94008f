"""Output formats. Adding a format is one new module here plus one line in `_ENCODERS`."""

from __future__ import annotations

from export_pipelines.core.encoders.base import Encoder
from export_pipelines.core.encoders.csv import CsvEncoder
from export_pipelines.core.encoders.parquet import ParquetEncoder

_ENCODERS: dict[str, type[Encoder]] = {cls.format: cls for cls in (CsvEncoder, ParquetEncoder)}


def formats() -> tuple[str, ...]:
    return tuple(_ENCODERS)


def encoder_class(fmt: str) -> type[Encoder]:
    return _ENCODERS[fmt]


__all__ = ["Encoder", "encoder_class", "formats"]
