"""Encoders on their own, into memory: the bytes must decode the way customers' tools decode them."""

from __future__ import annotations

import gzip
import io

import pyarrow as pa
import pyarrow.parquet as pq

from export_pipelines.core.encoders import encoder_class, formats
from export_pipelines.core.encoders.csv import CsvEncoder
from export_pipelines.core.encoders.parquet import ParquetEncoder
from export_pipelines.core.query import ColumnInfo

COLS = [
    ColumnInfo("id", "bigint", "int8", -1),
    ColumnInfo("amount", "numeric(12,2)", "numeric", (12 << 16 | 2) + 4),
]


def test_registry_lists_every_format():
    assert set(formats()) >= {"csv", "parquet"}
    for fmt in formats():
        cls = encoder_class(fmt)
        assert cls.default_compression in cls.compressions


def test_csv_gzip_parts_are_members_of_one_valid_gzip_file():
    enc = CsvEncoder(COLS, "gzip")
    part1 = enc.begin() + enc.encode(b"1,1.10\n") + enc.cut()
    part2 = enc.encode(b"2,\n") + enc.encode(b'3,"x"\n') + enc.finish()
    assert gzip.decompress(part1) == b"id,amount\n1,1.10\n"  # each part stands alone
    assert gzip.decompress(part1 + part2) == b'id,amount\n1,1.10\n2,\n3,"x"\n'


def test_csv_gzip_is_deterministic():
    def run() -> bytes:
        enc = CsvEncoder(COLS, "gzip")
        return enc.begin() + enc.encode(b"1,2\n") + enc.finish()

    assert run() == run()  # a re-made part is byte-identical (resume, retries)


def test_csv_none_is_plain_bytes():
    enc = CsvEncoder(COLS, "none")
    assert enc.extension == "csv"
    assert enc.begin() + enc.encode(b"1,2\n") + enc.finish() == b"id,amount\n1,2\n"


def test_parquet_numeric_becomes_exact_decimal_and_row_groups_accumulate():
    enc = ParquetEncoder(COLS, "zstd")
    out = bytearray(enc.begin())
    for start in range(0, 300_000, 50_000):
        ids = pa.array(range(start, start + 50_000), pa.int64())
        amounts = pa.array([f"{i}.05" for i in range(start, start + 50_000)])
        out += enc.encode(pa.RecordBatch.from_arrays([ids, amounts], names=["id", "amount"]))
    out += enc.finish()
    pf = pq.ParquetFile(io.BytesIO(bytes(out)))
    assert pf.schema_arrow.field("amount").type == pa.decimal128(12, 2)
    assert pf.metadata.num_rows == 300_000
    assert pf.metadata.num_row_groups <= 3  # batches are grouped, not one row group per batch
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    table = pf.read()
    assert str(table.column("amount")[123].as_py()) == "123.05"


def test_dictionary_columns_same_answer_as_counting_the_whole_sample():
    from export_pipelines.core.encoders.parquet import DISTINCT_PROBE_ROWS, dictionary_columns

    n = 20 * DISTINCT_PROBE_ROWS
    sample = pa.table(
        {
            "unique": pa.array(range(n), pa.int64()),
            "few": pa.array([i % 3 for i in range(n)], pa.int64()),
            # a tenth of the rows distinct overall, but every row of the first probe distinct
            "late_repeats": pa.array([i % (n // 10) for i in range(n)]),
            "just_over": pa.array([i % (n // 10 + 1) for i in range(n)]),
            "text": pa.array(["a", "b"] * (n // 2)),
            "constant": pa.array(["x"] * n),
        }
    )
    assert dictionary_columns(sample) == ["few", "late_repeats", "text", "constant"]
    assert dictionary_columns(sample.slice(0, 0)) == []
    assert dictionary_columns(sample.slice(0, 9)) == ["constant"]  # limit 1: one distinct value
