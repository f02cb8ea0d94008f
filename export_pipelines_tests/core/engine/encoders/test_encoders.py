"""Encoders on their own, into memory: the bytes must decode the way customers' tools decode them."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import zipfile

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.engine.encoders import xlsx, zipstream
from export_pipelines.core.engine.encoders.csv import CsvEncoder
from export_pipelines.core.engine.encoders.csv_excel import CsvExcelEncoder
from export_pipelines.core.engine.encoders.json_array import JsonArrayEncoder
from export_pipelines.core.engine.encoders.parquet import ParquetEncoder
from export_pipelines.core.engine.encoders.registry import encoder_class
from export_pipelines.core.engine.encoders.xlsx import XlsxEncoder
from export_pipelines.core.formats import format_names

COLS = [
    ColumnInfo("id", "bigint", "int8", -1),
    ColumnInfo("amount", "numeric(12,2)", "numeric", (12 << 16 | 2) + 4),
]


def test_registry_lists_every_format():
    assert set(format_names()) == {"csv", "csv_excel", "jsonl", "json", "parquet", "xlsx", "pdf"}
    for fmt in format_names():
        cls = encoder_class(fmt)
        assert cls.format == fmt  # the lazy registry names the right module
        assert cls.default_compression in cls.compressions


def test_csv_gzip_is_read_by_gunzip_byte_for_byte():
    """The gzip compressor (ISA-L) writes the standard format: the system's gunzip reads the
    members of several parts as one file, CRCs and sizes checked, back to the very bytes."""
    rows = b"".join(b'%d,%d.%02d,"note ""%d"""\n' % (i, i, i % 100, i * 7) for i in range(200_000))
    enc = CsvEncoder(COLS, "gzip")
    parts = [enc.begin() + enc.encode(rows[: len(rows) // 2]) + enc.cut()]
    parts.append(enc.encode(rows[len(rows) // 2 :]) + enc.finish())
    out = subprocess.run(["gzip", "-dc"], input=b"".join(parts), capture_output=True, check=True).stdout
    assert out == b"id,amount\n" + rows
    assert sum(map(len, parts)) < len(rows) / 3  # and it did compress


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


# ---------------------------------------------------------------- resume contract, new formats

RESUMABLE = [
    (fmt, comp) for fmt in ("csv", "csv_excel", "jsonl", "json") for comp in ("gzip", "zstd", "none")
]
# Whole rows as the COPY source hands them over: CSV with a quoted line break, or JSON lines.
CSV_BATCHES = [b'1,"a\nb"\n2,x\n', b'3,"q""uote"\n', b'4,\n5,""\n']
JSON_BATCHES = [b'{"id":1,"a":"x\\ny"}\n{"id":2,"a":null}\n', b'{"id":3,"a":""}\n', b'{"id":4,"a":"]"}\n']


def _batches(fmt: str) -> list[bytes]:
    return JSON_BATCHES if fmt in ("jsonl", "json") else CSV_BATCHES


def _decompress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "zstd":
        with pa.input_stream(pa.py_buffer(data), compression="zstd") as stream:
            return stream.read()
    return data


@pytest.mark.parametrize(("fmt", "compression"), RESUMABLE)
def test_resumed_file_is_byte_identical_and_parts_stand_alone(fmt, compression):
    cls = encoder_class(fmt)
    assert cls.resumable
    batches = _batches(fmt)
    whole = cls(COLS, compression)
    uninterrupted = whole.begin() + b"".join(whole.encode(b) + whole.cut() for b in batches[:-1])
    uninterrupted += whole.encode(batches[-1]) + whole.finish()
    # The same file written by three encoders, as a crashed export resumed at part boundaries.
    first = cls(COLS, compression)
    part1 = first.begin() + first.encode(batches[0]) + first.cut()
    second = cls(COLS, compression)
    part2 = second.resume() + second.encode(batches[1]) + second.cut()
    third = cls(COLS, compression)
    part3 = third.resume() + third.encode(batches[2]) + third.finish()
    assert part1 + part2 + part3 == uninterrupted
    # Resumed after the last row, only the file's end is left: the same bytes as without a crash.
    whole = cls(COLS, compression)
    head = whole.begin() + b"".join(whole.encode(b) for b in batches) + whole.cut()
    last = cls(COLS, compression)
    assert head + whole.finish() == head + last.resume() + last.finish()
    if compression != "none":
        _decompress(part2, compression)  # a part is a self-contained gzip member / zstd frames
    text = _decompress(uninterrupted, compression)
    if fmt == "json":
        assert [r["id"] for r in json.loads(text)] == [1, 2, 3, 4]
    elif fmt == "jsonl":
        assert [json.loads(line)["id"] for line in text.splitlines()] == [1, 2, 3, 4]
    else:
        body = text.removeprefix(b"\xef\xbb\xbf").decode()
        rows = list(csv.reader(io.StringIO(body, newline="")))
        assert rows == [["id", "amount"], ["1", "a\nb"], ["2", "x"], ["3", 'q"uote'], ["4", ""], ["5", ""]]


def test_csv_excel_crlf_only_between_records_whatever_the_chunking():
    enc = CsvExcelEncoder(COLS, "none")
    data = b'1,"a\nb ""c"" \nd"\n2,x\n'
    out = enc.begin() + b"".join(enc.encode(data[i : i + 3]) for i in range(0, len(data), 3)) + enc.finish()
    assert out == b'\xef\xbb\xbfid,amount\r\n1,"a\nb ""c"" \nd"\r\n2,x\r\n'


def test_json_array_of_no_rows_is_an_empty_array():
    enc = JsonArrayEncoder(COLS, "none")
    assert json.loads(enc.begin() + enc.finish()) == []


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_file_without_bytes_is_still_a_valid_compressed_file(compression):
    enc = encoder_class("jsonl")(COLS, compression)
    data = enc.begin() + enc.finish()
    assert data and _decompress(data, compression) == b""


def test_xlsx_starts_a_new_sheet_after_the_row_limit(monkeypatch):
    monkeypatch.setattr(xlsx, "SHEET_DATA_ROWS", 2)
    enc = XlsxEncoder(COLS, "none")
    data = (
        enc.begin()
        + enc.encode(b"n1,n1.5\nn2,\nn3,sx\n")
        + enc.encode(b'n4,"s<a&b>"\nn5,n0\n')
        + enc.finish()
    )
    workbook = openpyxl.load_workbook(io.BytesIO(data))
    assert workbook.sheetnames == ["Sheet1", "Sheet2", "Sheet3"]
    sheets = [list(workbook[name].iter_rows(values_only=True)) for name in workbook.sheetnames]
    assert all(rows[0] == ("id", "amount") for rows in sheets)  # every sheet has the header
    assert [rows[1:] for rows in sheets] == [[(1, 1.5), (2, None)], [(3, "x"), (4, "<a&b>")], [(5, 0)]]
    assert xlsx.sheet_layout(5) == [
        {"name": "Sheet1", "rows": 2},
        {"name": "Sheet2", "rows": 2},
        {"name": "Sheet3", "rows": 1},
    ]
    assert xlsx.sheet_layout(0) == [{"name": "Sheet1", "rows": 0}]


def test_xlsx_text_escapes():
    assert xlsx.xml_text("a\rb") == "a&#13;b"
    assert xlsx.xml_text("x\x01y _x0041_") == "x_x0001_y _x005F_x0041_"
    assert xlsx.excel_cell_text("🚀" * 20_000) == "🚀" * 16_383  # never half an emoji
    nasty = "a&b<c>d\re\x01f _x0041_ _x00ab_ &amp; &#13;"
    assert xlsx.xml_unescape(xlsx.xml_text(nasty)) == nasty
    assert (
        xlsx.column_letters(0) == "A" and xlsx.column_letters(25) == "Z" and xlsx.column_letters(26) == "AA"
    )


def test_zip_stream_is_a_valid_zip_and_deterministic():
    def build() -> bytes:
        z = zipstream.ZipStream()
        out = z.add("a.txt", b"hello") + z.start("b/c.xml") + z.write(b"<x/>" * 1000) + z.end()
        return out + z.close()

    data = build()
    assert data == build()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert archive.read("b/c.xml") == b"<x/>" * 1000 and archive.read("a.txt") == b"hello"


def test_parquet_writer_writes_what_pyarrow_parquet_writes():
    """The encoder uses pyarrow's writer class without pyarrow.parquet's filesystem layer; the
    file must be the very same bytes as pyarrow.parquet.ParquetWriter's with the same options."""
    from export_pipelines.core.engine.encoders.parquet import parquet_writer

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
    from export_pipelines.core.engine.encoders.parquet import DISTINCT_PROBE_ROWS, dictionary_columns

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


def modules_loaded_by(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules named by `prefixes` (or inside them) that a fresh interpreter has loaded
    after `imports`."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"import {imports}\n"
        f"print(sorted(m for m in sys.modules if m in {prefixes!r} or m.startswith({tuple(p + '.' for p in prefixes)!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return eval(out)


def test_export_core_keeps_unused_libraries_out_of_the_process():
    """Every imported library costs RSS in the export process: pyarrow.fs (S3/GCS/Azure/HDFS)
    ~8 MB, pandas ~55 MB. The core's imports must not pull them in."""
    loaded = modules_loaded_by(
        "export_pipelines.core.engine.exporter, export_pipelines.core.engine.manifest",
        ("pyarrow.fs", "pyarrow.parquet", "pandas", "dagster"),
    )
    assert sorted(m for m in loaded if m in ("pyarrow.fs", "pyarrow.parquet", "pandas", "dagster")) == []


def test_importing_request_validation_does_not_load_pyarrow():
    """The request sensor and the CLI check fields without paying for Parquet (or any encoder)."""
    assert (
        modules_loaded_by(
            "export_pipelines.core.requests.request", ("pyarrow", "export_pipelines.core.engine.encoders")
        )
        == []
    )
