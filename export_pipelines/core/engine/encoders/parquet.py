"""Parquet (zstd by default) from Arrow batches read natively by ADBC.

numeric(p,s) with p <= 38 becomes a Parquet decimal(p,s); numeric without a precision stays a
string (never a float); json/jsonb are JSON text. A Parquet file cannot be restarted mid-file,
so the file, not the part, is its unit of restart.

Values Parquet or ADBC cannot carry as they are (the type contract, docs/formats.md): intervals and
unconstrained numerics are rendered as text by PostgreSQL; NaN in a decimal column becomes
null; ±infinity timestamps and dates, which ADBC wraps around to garbage, become DuckDB's
infinity values (±(2^63-1) µs, ±(2^31-1) days). Those fixes run only on a batch that needs them.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

# The writer itself, not `pyarrow.parquet`: that module imports `pyarrow.fs`, which loads the S3,
# GCS, Azure and HDFS filesystem modules and libraries (~8 MB of RSS) that an export never uses.
# `parquet_writer` passes exactly what `pyarrow.parquet.ParquetWriter` passes (a test checks the
# files are byte-identical).
from pyarrow._parquet import ParquetWriter as _ParquetWriter

from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.engine.encoders.base import Encoder
from export_pipelines.core.engine.encoders.render_sql import column_ref
from export_pipelines.core.engine.encoders.type_contract import NAN, category, numeric_precision_scale
from export_pipelines.core.engine.query import ExportQuery, RenderedQuery
from export_pipelines.core.formats import format_spec
from export_pipelines.core.memory import release_free_memory

ROW_GROUP_ROWS = 64 * 1024  # ~15 MB of rows buffered: a row group size readers handle well, RSS stays low


# ADBC adds the 1970-2000 epoch shift to PostgreSQL's infinity (INT64_MAX / INT64_MIN µs,
# INT32_MAX / INT32_MIN days) and wraps around: these exact values mean ±infinity.
_PG_EPOCH_US = 946_684_800_000_000
_PG_EPOCH_DAYS = 10_957
_INT64_MAX, _INT32_MAX = 2**63 - 1, 2**31 - 1
_ADBC_INFINITY_US = {
    (_INT64_MAX + _PG_EPOCH_US) - 2**64: _INT64_MAX,
    -(2**63) + _PG_EPOCH_US: -_INT64_MAX,
}
_ADBC_INFINITY_DAYS = {
    (_INT32_MAX + _PG_EPOCH_DAYS) - 2**32: _INT32_MAX,
    -(2**31) + _PG_EPOCH_DAYS: -_INT32_MAX,
}
# PostgreSQL's earliest timestamp/date (4714-11-24 BC) since 1970: anything below is ADBC's wrap.
_PG_MIN_US = -210_866_803_200_000_000
_PG_MIN_DAYS = -2_440_588
# Rendered as text by PostgreSQL: Parquet has no microsecond interval; ADBC spells numeric NaN
# "nan" and has no timetz.
_AS_TEXT = ("numeric", "interval")


def _parquet_expression(col: ColumnInfo) -> sql.Composable:
    if category(col) in _AS_TEXT or col.type_name == "timetz":
        return sql.SQL("{}::text").format(column_ref(col))
    if category(col) == "array":
        # ADBC flattens {{1,2},{3,4}} into [1,2,3,4]: a Parquet list has one dimension, so a
        # multi-dimensional value becomes null instead (the type contract says so).
        return sql.SQL("CASE WHEN array_ndims({c}) > 1 THEN NULL ELSE {c} END").format(c=column_ref(col))
    return column_ref(col)


def parquet_writer(sink: Any, schema: pa.Schema, compression: str | None, use_dictionary: Any) -> Any:
    """A Parquet writer with `pyarrow.parquet.ParquetWriter`'s defaults (format 2.6, statistics)."""
    return _ParquetWriter(
        sink,
        schema,
        version="2.6",
        compression=compression,
        use_dictionary=use_dictionary,
        write_statistics=True,
        writer_engine_version="V2",
        data_page_version="1.0",
    )


def _numeric_type(col: ColumnInfo) -> pa.DataType | None:
    return pa.decimal128(*ps) if category(col) == "decimal" and (ps := numeric_precision_scale(col)) else None


def _decimal_with_nan(array: pa.Array, decimal: pa.DataType) -> tuple[pa.Array, int]:
    """NaN cannot be a decimal128: it becomes null (the type contract says so). Also returns
    how many NaN there were (the file's special-value count)."""
    text = array.storage if isinstance(array.type, pa.BaseExtensionType) else array
    is_nan = pc.fill_null(pc.equal(pc.utf8_lower(text), "nan"), False)
    nans = int(pc.sum(is_nan).as_py() or 0)
    return pc.if_else(is_nan, pa.scalar(None, pa.string()), text).cast(decimal), nans


def _fix_infinities(array: pa.Array) -> pa.Array:
    """Map ADBC's wrapped ±infinity to DuckDB's infinity values; other wrapped values (years past
    Arrow's range) to null. Costs one min() per temporal column when nothing needs fixing."""
    is_date = pa.types.is_date32(array.type)
    raw = array.view(pa.int32() if is_date else pa.int64())
    smallest = pc.min(raw).as_py()
    limit = _PG_MIN_DAYS if is_date else _PG_MIN_US
    if smallest is None or smallest >= limit:
        return array
    sentinels = _ADBC_INFINITY_DAYS if is_date else _ADBC_INFINITY_US
    fixed = pc.if_else(pc.less(raw, pa.scalar(limit, raw.type)), pa.scalar(None, raw.type), raw)
    for wrapped, infinity in sentinels.items():
        fixed = pc.if_else(pc.equal(raw, wrapped), pa.scalar(infinity, raw.type), fixed)
    return fixed.view(array.type) if fixed.null_count == 0 else fixed.cast(array.type)


DISTINCT_PROBE_ROWS = 4096  # first look at this many rows; the probe grows x4 while still undecided


def dictionary_columns(sample: pa.Table) -> list[str]:
    """Columns worth dictionary-encoding, judged on the first row group: few distinct values
    (at most a tenth of the sample's rows).

    Dictionary-encoding unique text (emails, notes, JSON) only to fall back later costs memory
    and made the demo's files 37% larger. Counting distinct values builds a hash table as large
    as the column (27 MB for 64Ki int64 keys), so the count runs on growing prefixes and stops as
    soon as a prefix alone has too many: the same answer as counting the whole sample.
    """
    if sample.num_rows == 0:
        return []
    limit = max(1, sample.num_rows // 10)
    chosen = []
    for name, column in zip(sample.column_names, sample.columns, strict=True):
        probe = DISTINCT_PROBE_ROWS
        try:
            while True:
                distinct = pc.count_distinct(column.slice(0, probe)).as_py()
                if distinct > limit:
                    break
                if probe >= sample.num_rows:
                    chosen.append(name)
                    break
                probe *= 4
        except pa.ArrowNotImplementedError:
            pass  # e.g. the JSON extension type: free text anyway
    return chosen


class _Buffer:
    """A write-only file object for ParquetWriter whose bytes we drain after each write."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pos = 0
        self.closed = False

    def write(self, data: Any) -> int:
        b = bytes(data)
        self._chunks.append(b)
        self._pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


class ParquetEncoder(Encoder):
    spec = format_spec("parquet")
    input_kind = "arrow"

    def __init__(self, columns: list[ColumnInfo], compression: str) -> None:
        super().__init__(columns, compression)
        self._buffer = _Buffer()
        self._writer: Any = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._decimals = {c.name: t for c in columns if (t := _numeric_type(c)) is not None}
        self._nans: dict[str, int] = {}  # NaN per decimal column, counted while casting
        self._schema: pa.Schema | None = None

    @classmethod
    def stream_counted(cls, columns: list[ColumnInfo]) -> frozenset[tuple[str, str]]:
        # NaN of a numeric(p,s) column: the decimal cast finds them anyway, where PostgreSQL
        # would read every row once more (such columns are rarely indexed).
        return frozenset((c.name, NAN) for c in columns if _numeric_type(c) is not None)

    def special_counts(self) -> dict[str, dict[str, int]]:
        return {name: {NAN: n} for name, n in self._nans.items() if n}

    @classmethod
    def render_query(cls, query: ExportQuery) -> ExportQuery:
        columns = [query.types[c] for c in query.request.columns]
        expressions = tuple(_parquet_expression(c) for c in columns)
        if all(e == column_ref(c) for e, c in zip(expressions, columns, strict=True)):
            return query  # ADBC reads the columns as they are
        return RenderedQuery(query.spec, query.request, query.types, expressions=expressions)

    def output_types(self) -> dict[str, str]:
        if self._schema is None:
            return {c.name: str(self._decimals.get(c.name, "")) or "arrow" for c in self.columns}
        return {f.name: str(f.type) for f in self._schema}

    def _normalise(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays, fields = [], []
        for field, array in zip(batch.schema, batch.columns, strict=True):
            if isinstance(field.type, pa.ExtensionType):
                # ADBC hands numeric and json as extension types over string storage.
                array = array.storage
            if field.name in self._decimals:
                try:
                    array = array.cast(self._decimals[field.name])
                except pa.ArrowInvalid:  # NaN: the only numeric(p,s) value a decimal cannot hold
                    array, nans = _decimal_with_nan(array, self._decimals[field.name])
                    self._nans[field.name] = self._nans.get(field.name, 0) + nans
            elif pa.types.is_timestamp(array.type) or pa.types.is_date32(array.type):
                array = _fix_infinities(array)
            arrays.append(array)
            fields.append(pa.field(field.name, array.type))
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))

    def begin(self) -> bytes:
        return b""

    def encode(self, batch: pa.RecordBatch) -> bytes:
        batch = self._normalise(batch)
        if self._schema is None:
            self._schema = batch.schema
        elif batch.schema != self._schema:
            batch = batch.cast(self._schema)
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush_row_group()
        return self._buffer.drain()

    def _flush_row_group(self) -> None:
        if self._schema is None:
            return
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        if self._writer is None:
            self._writer = parquet_writer(
                self._buffer,
                self._schema,
                compression=self.compression if self.compression != "none" else None,
                use_dictionary=dictionary_columns(table),
            )
        if self._pending:
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        del table
        self._pending, self._pending_rows = [], 0
        # The row group is written: give back what Arrow's pool would keep cached (see memory.py).
        release_free_memory()

    def finish(self) -> bytes:
        if self._schema is None:
            # No rows: still a valid, typed, empty file.
            self._schema = pa.schema(
                [pa.field(c.name, self._decimals.get(c.name, pa.string())) for c in self.columns]
            )
        self._flush_row_group()
        assert self._writer is not None
        self._writer.close()
        return self._buffer.drain()
