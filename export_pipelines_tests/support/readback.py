"""Reading an export back the way a customer would: manifest first, then each file it names."""

from __future__ import annotations

import csv
import gzip
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def get_bytes(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def read_manifest(client: Any, bucket: str, manifest_key: str) -> dict[str, Any]:
    return json.loads(get_bytes(client, bucket, manifest_key))


def csv_text(client: Any, bucket: str, manifest: dict[str, Any]) -> list[str]:
    """Each file's decoded CSV text, in manifest order."""
    out = []
    for f in manifest["files"]:
        raw = get_bytes(client, bucket, f["key"])
        out.append((gzip.decompress(raw) if f["key"].endswith(".gz") else raw).decode("utf-8"))
    return out


def csv_rows(client: Any, bucket: str, manifest: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Header and rows of all files; NULL (unquoted empty) is None, "" stays "" (pyarrow's reader
    tells the two apart; python's csv cannot). Every file must carry the same header."""
    header: list[str] | None = None
    rows: list[tuple[Any, ...]] = []
    for text in csv_text(client, bucket, manifest):
        data = text.encode()
        names = next(csv.reader(io.StringIO(text.split("\n", 1)[0] + "\n")))
        if header is None:
            header = names
        assert names == header, "every file starts with the same header"
        table = pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        rows.extend(zip(*(table.column(n).to_pylist() for n in names), strict=True))
        # python's csv module must agree on the row structure (RFC 4180 readers do).
        py_rows = list(csv.reader(io.StringIO(text, newline="")))
        assert len(py_rows) - 1 == table.num_rows
    return header or [], rows


def parquet_table(client: Any, bucket: str, manifest: dict[str, Any]) -> pa.Table:
    tables = [pq.read_table(io.BytesIO(get_bytes(client, bucket, f["key"]))) for f in manifest["files"]]
    return pa.concat_tables(tables)
