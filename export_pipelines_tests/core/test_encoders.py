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


def test_parquet_writer_writes_what_pyarrow_parquet_writes():
    """The encoder uses pyarrow's writer class without pyarrow.parquet's filesystem layer; the
    file must be the very same bytes as pyarrow.parquet.ParquetWriter's with the same options."""
    from export_pipelines.core.encoders.parquet import parquet_writer

    table = pa.table(
        {
            "id": pa.array(range(5000), pa.int64()),
            "status": pa.array(["paid", "shipped"] * 2500),
            "amount": pa.array([i / 100 for i in range(5000)]).cast(pa.decimal128(12, 2)),
            "note": pa.array([None if i % 7 else f"note {i}" for i in range(5000)]),
        }
    )
    for compression, dictionary in (("zstd", ["status"]), (None, [])):
        ours, theirs = io.BytesIO(), io.BytesIO()
        writer = parquet_writer(ours, table.schema, compression=compression, use_dictionary=dictionary)
        writer.write_table(table, row_group_size=2000)
        writer.close()
        with pq.ParquetWriter(theirs, table.schema, compression=compression, use_dictionary=dictionary) as w:
            w.write_table(table, row_group_size=2000)
        assert ours.getvalue() == theirs.getvalue()


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


def test_export_core_keeps_unused_libraries_out_of_the_process():
    """Every imported library costs RSS in the export process: pyarrow.fs (S3/GCS/Azure/HDFS)
    ~8 MB, pandas ~55 MB. The core's imports must not pull them in."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import export_pipelines.core.exporter, export_pipelines.core.manifest\n"
        "print(sorted(m for m in ('pyarrow.fs', 'pyarrow.parquet', 'pandas', 'dagster') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
