"""The type contract, enforced: `type_zoo` (every type, every awkward value, several tenants) is
exported in every format against the real PostgreSQL and S3, read back with independent readers
(python csv/json, pyarrow, openpyxl, DuckDB) and compared value by value with what PostgreSQL
itself returns. Expectations are derived here from PostgreSQL's own output, not from our code.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import struct
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_pipelines.core.engine.encoders.type_contract import contract_markdown
from export_pipelines_tests.support import type_zoo
from export_pipelines_tests.support.readback import csv_rows, get_bytes
from export_pipelines_tests.support.zoo_expect import (
    NUMBERS,
    excel_csv_value,
    excel_unescape,
    export,
    file_bytes,
    pg_text,
    xlsx_expected,
)

FORMATS_PAGE = Path(__file__).resolve().parents[4] / "docs" / "formats.md"
INT64_MAX, INT32_MAX = 2**63 - 1, 2**31 - 1
EXCEL_CELL_UNITS = 32_767


def decimal_signed(value: Any) -> tuple[Decimal, bool] | Any:
    return (value, value.is_signed()) if isinstance(value, Decimal) else value


# ---------------------------------------------------------------- the formats page and manifest


def test_formats_page_carries_the_generated_type_contract_table():
    assert contract_markdown() in FORMATS_PAGE.read_text()


# ---------------------------------------------------------------- CSV


def test_csv_plain_every_value_is_postgres_text(zoo, pg_rows, source_url, s3_client, bucket, prefix):
    for tenant, rows in pg_rows.items():
        manifest = export(zoo, source_url, s3_client, bucket, f"{prefix}-{tenant}", tenant_id=tenant)
        header, got = csv_rows(s3_client, bucket, manifest)  # pyarrow: NULL vs "" kept
        assert header == list(type_zoo.COLUMNS)
        expected = [tuple(pg_text(r, c) for c in type_zoo.COLUMNS) for r in rows]
        assert got == expected
        # DuckDB, a second reader: quoted "" is the empty string, an empty field is NULL.
        path = _local(file_bytes(s3_client, bucket, manifest), "csv")
        duck = duckdb.sql(
            f"SELECT * FROM read_csv('{path}', all_varchar=true, header=true, allow_quoted_nulls=false, "
            "strict_mode=true)"
        ).fetchall()
        assert duck == expected
        columns = {c["name"]: c for c in manifest["columns"]}
        assert columns["c_bytea"]["postgres_type"] == "bytea"
        assert columns["c_bytea"]["representation"] == "base64 (one line)"


def test_csv_zstd_is_concatenated_frames_of_the_same_bytes(zoo, source_url, s3_client, bucket, prefix):
    plain = export(zoo, source_url, s3_client, bucket, prefix + "-n", tenant_id="z-2", compression="none")
    zstd = export(zoo, source_url, s3_client, bucket, prefix + "-z", tenant_id="z-2", compression="zstd")
    (f,) = zstd["files"]
    assert f["key"].endswith(".csv.zst")
    raw = get_bytes(s3_client, bucket, f["key"])
    with pa.input_stream(pa.py_buffer(raw), compression="zstd") as stream:
        assert stream.read() == file_bytes(s3_client, bucket, plain)
    assert s3_client.head_object(Bucket=bucket, Key=f["key"])["ContentType"] == "application/zstd"


# ---------------------------------------------------------------- CSV, excel profile


def test_csv_excel_profile(zoo, pg_rows, source_url, s3_client, bucket, prefix):
    for tenant, rows in pg_rows.items():
        manifest = export(
            zoo, source_url, s3_client, bucket, f"{prefix}-{tenant}", tenant_id=tenant, format="csv_excel"
        )
        (f,) = manifest["files"]
        assert f["key"].endswith(".csv")  # uncompressed by default: Excel opens it directly
        raw = file_bytes(s3_client, bucket, manifest)
        assert raw.startswith(b"\xef\xbb\xbf")
        expected = [tuple(excel_csv_value(c, pg_text(r, c)) for c in type_zoo.COLUMNS) for r in rows]
        # python's csv module (NULL and "" both read as ""), then DuckDB (tells them apart).
        got = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
        assert got[0] == list(type_zoo.COLUMNS)
        assert got[1:] == [["" if v is None else v for v in e] for e in expected]
        duck = duckdb.sql(
            f"SELECT * FROM read_csv('{_local(raw[3:], 'csv')}', all_varchar=true, header=true, "
            "allow_quoted_nulls=false)"
        ).fetchall()
        assert duck == expected
        # Records end in CRLF; line breaks inside values are left as they are.
        values = [v for e in expected for v in e if v]
        inner_crlf = sum(v.count("\r\n") for v in values)
        inner_bare_lf = sum(v.count("\n") - v.count("\r\n") for v in values)
        text = raw.decode("utf-8-sig")
        assert text.count("\r\n") == len(rows) + 1 + inner_crlf
        assert text.count("\n") - text.count("\r\n") == inner_bare_lf
        assert any(v.startswith("'=") for v in values) and any(v.startswith('="') for v in values)


# ---------------------------------------------------------------- JSONL and JSON


def _json_loads(text: str) -> Any:
    # Decimal for every number (exact digits, -0 keeps its sign); pairs keep order and duplicates.
    return json.loads(text, parse_float=Decimal, parse_int=Decimal, object_pairs_hook=list)


def json_timestamp(text: str) -> str:
    """PostgreSQL's JSON style for a timestamp text: 'T' between date and time, +00 as +00:00."""
    if text in ("infinity", "-infinity"):
        return text
    text = text.replace(" ", "T", 1)
    return re.sub(r"\+00( BC)?$", r"+00:00\1", text)


def _decimals(value: Any) -> Any:
    if isinstance(value, list):
        return [_decimals(v) for v in value]
    return Decimal(value) if isinstance(value, int) and not isinstance(value, bool) else value


def json_expected(row: dict[str, Any], col: str) -> Any:
    text, py = row[col], row[f"{col}:py"]
    if text is None:
        return None
    if col in ("c_smallint", "c_integer"):
        return Decimal(text)  # JSON numbers: every reader holds them exactly
    if col in NUMBERS or col == "id":
        return text  # bigint, numeric, real, double: strings of PostgreSQL's exact text
    if col == "c_boolean":
        return py
    if col in ("c_timestamp", "c_timestamptz"):
        return json_timestamp(text)
    if col in ("c_jsonb", "c_json"):
        return _json_loads(text)
    if col in ("c_int_array", "c_text_array"):
        return _decimals(py)
    return pg_text(row, col)


def _check_json_rows(objects: list[Any], rows: list[dict[str, Any]]) -> None:
    assert len(objects) == len(rows)
    for obj, row in zip(objects, rows, strict=True):
        assert [k for k, _ in obj] == list(type_zoo.COLUMNS)  # keys in column order
        for (_name, value), col in zip(obj, type_zoo.COLUMNS, strict=True):
            want = json_expected(row, col)
            assert decimal_signed(value) == decimal_signed(want), (col, row["id"], value, want)


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_json_formats(fmt, zoo, pg_rows, source_url, s3_client, bucket, prefix):
    for tenant, rows in pg_rows.items():
        manifest = export(
            zoo, source_url, s3_client, bucket, f"{prefix}-{tenant}", tenant_id=tenant, format=fmt
        )
        raw = file_bytes(s3_client, bucket, manifest)
        text = raw.decode("utf-8")
        if fmt == "jsonl":
            lines = text.split("\n")
            assert lines[-1] == "" and all(lines[:-1])  # one object per line, newline-terminated
            objects = [_json_loads(line) for line in lines[:-1]]
            duck = duckdb.sql(
                f"SELECT json_extract_string(json, '$.c_text'), json_extract_string(json, '$.c_bigint') "
                f"FROM read_json_objects('{_local(raw, 'jsonl')}', format='newline_delimited')"
            ).fetchall()
            assert duck == [(r["c_text"], r["c_bigint"]) for r in rows]
        else:
            objects = _json_loads(text)
        _check_json_rows(objects, rows)
        columns = {c["name"]: c for c in manifest["columns"]}
        assert (
            columns["c_double"]["special_values"] == {} and "string" in columns["c_double"]["representation"]
        )
        assert "SQL NULL" in columns["c_jsonb"]["special_values"]["the JSON value null"]


# ---------------------------------------------------------------- Parquet


def parquet_expected(row: dict[str, Any], col: str) -> Any:
    text, py = row[col], row[f"{col}:py"]
    if text is None:
        return None
    if col == "c_real":  # a float32 in the file
        return struct.unpack("<f", struct.pack("<f", py))[0]
    if col in ("c_smallint", "c_integer", "c_bigint", "id", "c_boolean", "c_double"):
        return py
    if col == "c_decimal":
        return None if text == "NaN" else Decimal(text)
    if col in ("c_timestamp", "c_timestamptz"):
        if text in ("infinity", "-infinity"):
            return INT64_MAX if text == "infinity" else -INT64_MAX
        us = int(row[f"{col}:us"])
        return us if us < 9_223_371_331_200_000_000 else None  # after 294246: beyond Arrow
    if col == "c_date":
        return {"infinity": INT32_MAX, "-infinity": -INT32_MAX}.get(text, row["c_date:days"])
    if col == "c_time":
        return row["c_time:us"]
    if col == "c_uuid":
        return text
    if col == "c_jsonb":
        return _json_loads(text)
    if col == "c_int_array":
        return None if text.startswith("{{") else py
    if col in ("c_text_array", "c_bytea", "c_char"):
        return py
    return text  # text, numeric as exact text, interval ISO 8601, json as written, enum


def parquet_value(col: str, array: pa.ChunkedArray, i: int) -> Any:
    scalar = array[i]
    if not scalar.is_valid:
        return None
    if col in ("c_timestamp", "c_timestamptz", "c_time"):
        return scalar.cast(pa.int64()).as_py()
    if col == "c_date":
        return scalar.cast(pa.int32()).as_py()
    if col == "c_uuid":
        value = scalar.as_py()
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(bytes=value))
    if col == "c_jsonb":
        return _json_loads(scalar.as_py())
    return scalar.as_py()


def test_parquet(zoo, pg_rows, source_url, s3_client, bucket, prefix):
    for tenant, rows in pg_rows.items():
        manifest = export(
            zoo, source_url, s3_client, bucket, f"{prefix}-{tenant}", tenant_id=tenant, format="parquet"
        )
        raw = file_bytes(s3_client, bucket, manifest)
        table = pq.read_table(io.BytesIO(raw))
        assert table.num_rows == len(rows)
        types = {f.name: f.type for f in table.schema}
        assert types["c_decimal"] == pa.decimal128(20, 6) and types["c_numeric"] == pa.string()
        assert types["c_timestamp"] == pa.timestamp("us") and types["c_timestamptz"] == pa.timestamp(
            "us", "UTC"
        )
        for col in type_zoo.COLUMNS:
            array = table.column(col)
            for i, row in enumerate(rows):
                got, want = parquet_value(col, array, i), parquet_expected(row, col)
                if isinstance(want, float) and math.isnan(want):
                    assert isinstance(got, float) and math.isnan(got), (col, row["id"])
                elif isinstance(want, float):
                    assert (got, math.copysign(1, got)) == (want, math.copysign(1, want)), (col, row["id"])
                else:
                    assert got == want, (col, row["id"], got, want)
        # DuckDB reads the same file: infinities as infinity, decimals and text exact.
        duck = duckdb.sql(
            f"SELECT id, c_text, c_decimal::varchar, isinf(c_timestamp), isinf(c_date), c_bytea "
            f"FROM '{_local(raw, 'parquet')}' ORDER BY id"
        ).fetchall()
        want_duck = [
            (
                r["id:py"],
                r["c_text"],
                None if r["c_decimal"] in (None, "NaN") else r["c_decimal"],
                None
                if parquet_expected(r, "c_timestamp") is None
                else r["c_timestamp"] in ("infinity", "-infinity"),
                None if r["c_date"] is None else r["c_date"] in ("infinity", "-infinity"),
                r["c_bytea:py"],
            )
            for r in rows
        ]
        for have, want in zip(duck, want_duck, strict=True):
            assert have == want, (have[:5], want[:5])
        columns = {c["name"]: c for c in manifest["columns"]}
        assert columns["c_decimal"]["output_type"] == "decimal128(20, 6)"
        assert "null" in columns["c_decimal"]["special_values"]["NaN"]
        assert columns["c_int_array"]["postgres_type"] == "integer[]"


# ---------------------------------------------------------------- XLSX


def _xlsx_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, datetime):
        return value
    if isinstance(value, int | float):
        return Decimal(repr(value))
    return excel_unescape(value)


def test_xlsx(zoo, pg_rows, source_url, s3_client, bucket, prefix):
    for tenant, rows in pg_rows.items():
        manifest = export(
            zoo, source_url, s3_client, bucket, f"{prefix}-{tenant}", tenant_id=tenant, format="xlsx"
        )
        (f,) = manifest["files"]
        assert f["sheets"] == [{"name": "Sheet1", "rows": len(rows)}]
        workbook = openpyxl.load_workbook(io.BytesIO(file_bytes(s3_client, bucket, manifest)))
        sheet = workbook["Sheet1"]
        got = list(sheet.iter_rows(values_only=True))
        assert list(got[0]) == list(type_zoo.COLUMNS)
        assert all(cell.font.b for cell in sheet[1]) and sheet.freeze_panes == "A2"
        assert len(got) == len(rows) + 1
        for values, row in zip(got[1:], rows, strict=True):
            for value, col in zip(values, type_zoo.COLUMNS, strict=True):
                want = xlsx_expected(row, col)
                have = _xlsx_value(value)
                if isinstance(want, Decimal):
                    assert isinstance(have, Decimal) and float(have) == float(want), (
                        col,
                        row["id"],
                        have,
                        want,
                    )
                else:
                    assert have == want, (col, row["id"], str(have)[:80], str(want)[:80])
        columns = {c["name"]: c for c in manifest["columns"]}
        assert "32,767" in next(iter(columns["c_text"]["special_values"].values()))


def _local(data: bytes, suffix: str) -> str:
    import tempfile

    handle = tempfile.NamedTemporaryFile(suffix="." + suffix, delete=False)  # noqa: SIM115 - read by DuckDB
    handle.write(data)
    handle.close()
    return handle.name


@pytest.mark.parametrize("fmt", ["csv", "csv_excel", "jsonl", "json", "parquet", "xlsx"])
def test_manifest_lists_postgres_type_and_representation(fmt, zoo, source_url, s3_client, bucket, prefix, pg):
    manifest = export(zoo, source_url, s3_client, bucket, prefix, tenant_id="z-3", format=fmt)
    types = dict(
        pg.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'public.type_zoo'::regclass AND attnum > 0 AND NOT attisdropped"
        ).fetchall()
    )
    columns = manifest["columns"]
    assert [c["name"] for c in columns] == list(type_zoo.COLUMNS)
    for c in columns:
        assert c["postgres_type"] == types[c["name"]]
        assert c["representation"] and c["output_type"] and isinstance(c["special_values"], dict)
    by_name = {c["name"]: c for c in columns}
    bytea = by_name["c_bytea"]["representation"]
    assert bytea == {
        "parquet": "binary",
        "xlsx": "text cell (cut at Excel's 32,767-character limit), base64",
    }.get(fmt, bytea)
    assert "base64" in bytea or fmt == "parquet"
    if fmt == "parquet":  # the Arrow type really written
        assert by_name["c_timestamptz"]["output_type"] == "timestamp[us, tz=UTC]"
        assert "null" in by_name["c_int_array"]["special_values"]["multi-dimensional values"]
