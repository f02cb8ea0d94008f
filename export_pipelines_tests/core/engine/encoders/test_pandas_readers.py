"""pandas as the customer's reader: the type-zoo table exported in every format and read with
pandas' own reader (in .venv-readers, a subprocess: the project's venv has no pandas), called the
way docs/formats.md ("Reading exports with pandas") says, and compared with PostgreSQL through the type
contract. What pandas cannot hold is stated in docs/formats.md (the type contract), and checked here exactly.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from datetime import datetime, time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from export_pipelines_tests.core.engine.encoders.test_type_contract import (
    json_timestamp,
    parquet_expected,
    parquet_value,
)
from export_pipelines_tests.support import type_zoo
from export_pipelines_tests.support.zoo_expect import (
    NUMBERS,
    excel_csv_value,
    excel_unescape,
    export,
    file_bytes,
    pg_text,
    xlsx_expected,
)

ROOT = Path(__file__).resolve().parents[4]
READERS_PY = ROOT / ".venv-readers" / "bin" / "python"
# On CI the customer readers must be there (scripts/test_readers.sh, test_tools.sh): a missing one fails, never skips.
ON_CI = os.environ.get("CI") == "true"
needs_pandas = pytest.mark.skipif(
    not READERS_PY.exists() and not ON_CI, reason=".venv-readers missing (scripts/test_readers.sh makes it)"
)
EXT = {
    "csv": "csv",
    "csv_excel": "csv",
    "jsonl": "jsonl",
    "json": "json",
    "parquet": "parquet",
    "xlsx": "xlsx",
}
# The calls docs/formats.md gives, verbatim.
READ_CALLS = {
    "csv": "pd.read_csv(path, dtype=str, keep_default_na=False)",
    "csv_excel": "pd.read_csv(path, dtype=str, keep_default_na=False)",
    "jsonl": "pd.read_json(path, lines=True, dtype=False, convert_dates=False)",
    "json": "pd.read_json(path, dtype=False, convert_dates=False)",
    "parquet": 'pd.read_parquet(path, dtype_backend="pyarrow")',
    "xlsx": 'pd.read_excel(path, dtype=object, keep_default_na=False, na_values=[""])',
}
TEMPORAL = ("c_date", "c_time", "c_timestamp", "c_timestamptz")
# Run in .venv-readers: read the file with pandas, hand back every cell as JSON
# (floats tagged so NaN, ±inf and -0 survive; nested values as they are).
SCRIPT = """
import datetime, json, math, sys
import pandas as pd
path, out, call = sys.argv[1:4]
df = eval(call)

def cell(v):
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float):
        return None if math.isnan(v) else {"float": repr(v)}
    if isinstance(v, bool | int | str | dict | list):
        return v
    if isinstance(v, datetime.datetime):
        return {"datetime": v.isoformat()}
    return {"other": repr(v)}

if out.endswith(".parquet"):
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), out)
    as_python = {}
    for c in ("c_date", "c_time", "c_timestamp", "c_timestamptz"):
        values = []
        for i in range(len(df)):
            try:
                v = df[c].iloc[i]
                values.append(None if v is pd.NA else str(v))
            except (OverflowError, ValueError) as exc:
                values.append("error: " + type(exc).__name__)
        as_python[c] = values
    print(json.dumps({"columns": list(df.columns), "python": as_python}))
else:
    print(json.dumps({"columns": list(df.columns), "rows": [[cell(v) for v in r] for r in df.itertuples(index=False)]}))
"""


def read_with_pandas(fmt: str, raw: bytes, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / f"export.{EXT[fmt]}"
    path.write_bytes(raw)
    out = tmp_path / ("pandas.parquet" if fmt == "parquet" else "pandas.json")
    done = subprocess.run(
        [str(READERS_PY), "-c", SCRIPT, str(path), str(out), READ_CALLS[fmt]],
        check=True,
        capture_output=True,
        text=True,
    )
    got = json.loads(done.stdout)
    assert got["columns"] == list(type_zoo.COLUMNS)
    if fmt == "parquet":
        got["table"] = pq.read_table(out)
    return got


def _float(value: Any) -> float:
    assert isinstance(value, dict) and "float" in value, value
    return float(value["float"])


def _nested_json(text: str) -> Any:
    # What a double-based JSON parser makes of the stored JSON: numbers as doubles.
    return json.loads(text, parse_int=float)


def _same_json(have: Any, want: Any) -> bool:
    if isinstance(have, dict) and set(have) == {"float"}:  # a top-level number, tagged
        have = float(have["float"])
    if isinstance(want, list):
        return isinstance(have, list) and len(have) == len(want) and all(map(_same_json, have, want))
    if isinstance(want, dict):
        return (
            isinstance(have, dict)
            and have.keys() == want.keys()
            and all(_same_json(have[k], want[k]) for k in want)
        )
    if isinstance(want, float):
        return isinstance(have, int | float) and float(have) == want
    return have == want


def check_csv(fmt: str, got: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    # dtype=str, keep_default_na=False: every value is the file's text; NULL reads as "" like ''.
    for have, row in zip(got["rows"], rows, strict=True):
        for value, col in zip(have, type_zoo.COLUMNS, strict=True):
            text = pg_text(row, col)
            want = excel_csv_value(col, text) if fmt == "csv_excel" else text
            assert value == ("" if want is None else want), (col, row["id"], str(value)[:80])


def check_json(got: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    for have, row in zip(got["rows"], rows, strict=True):
        for value, col in zip(have, type_zoo.COLUMNS, strict=True):
            text = row[col]
            if text is None:
                assert value is None, (col, row["id"], value)
            elif col in ("c_smallint", "c_integer"):
                assert _float(value) == int(text), (col, row["id"])  # float64 column: exact to 2^53
            elif col in NUMBERS or col == "id":
                assert value == text, (col, row["id"], value)  # strings: PostgreSQL's exact text
            elif col == "c_boolean":
                assert value is row["c_boolean:py"], (col, row["id"])
            elif col in ("c_timestamp", "c_timestamptz"):
                assert value == json_timestamp(text), (col, row["id"], value)
            elif col in ("c_jsonb", "c_json"):
                # Nested numbers are JSON numbers as stored: pandas reads them as doubles
                # (12345678901234567890.5 -> 1.2345678901234567e19), as the contract says.
                want = _nested_json(text)
                assert _same_json(value, want), (col, row["id"], value)
            elif col in ("c_int_array", "c_text_array"):
                assert value == row[f"{col}:py"], (col, row["id"], value)
            else:
                assert value == pg_text(row, col), (col, row["id"], str(value)[:80])


def check_xlsx(got: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    # dtype=object, keep_default_na=False, na_values=[""]: cells as openpyxl reads them; an empty
    # cell (NULL) and an empty text cell ('') are both NaN; "NULL", "NaN" text stays text.
    for have, row in zip(got["rows"], rows, strict=True):
        for value, col in zip(have, type_zoo.COLUMNS, strict=True):
            want = xlsx_expected(row, col)
            if want is None or want == "":
                assert value is None, (col, row["id"], value)
            elif isinstance(want, bool):
                assert value is want, (col, row["id"], value)
            elif col in ("c_smallint", "c_integer", "id"):
                assert value == want and isinstance(value, int), (col, row["id"], value)
            elif not isinstance(want, str) and hasattr(want, "is_signed"):  # a Decimal: a number cell
                number = value if isinstance(value, int) else _float(value)
                assert float(number) == float(want), (col, row["id"], value, want)
            elif hasattr(want, "isoformat"):
                assert value == {"datetime": want.isoformat()}, (col, row["id"], value)
            else:
                assert isinstance(value, str) and excel_unescape(value) == want, (
                    col,
                    row["id"],
                    str(value)[:80],
                )


def _python_temporal(row: dict[str, Any], col: str) -> str | None:
    """What pandas' pyarrow-backed column gives as a Python object (type contract, Parquet)."""
    text = row[col]
    if text is None:
        return None
    if col == "c_time":
        # datetime.time has no 24:00:00: pyarrow turns 86,400,000,000 µs into 00:00:00.
        return "00:00:00" if text == "24:00:00" else str(time.fromisoformat(text))
    year_ok = text[:1].isdigit() and text[4:5] == "-" and not text.endswith(" BC") and text[:4] != "0000"
    if not year_ok:  # BC, 5-digit years, ±infinity: outside Python's years 1..9999
        return None if parquet_expected(row, col) is None else "error: OverflowError"
    if col == "c_date":
        return text
    return str(datetime.fromisoformat(text.replace("+00", "+00:00")))  # pandas' str(Timestamp)


def check_parquet(got: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    # Every value is in pandas' pyarrow-backed frame: written back by pandas, it is the export.
    table = got["table"]
    for col in type_zoo.COLUMNS:
        array = table.column(col)
        for i, row in enumerate(rows):
            have, want = parquet_value(col, array, i), parquet_expected(row, col)
            if isinstance(want, float) and math.isnan(want):
                assert isinstance(have, float) and math.isnan(have), (col, row["id"])
            elif isinstance(want, float):
                assert (have, math.copysign(1, have)) == (want, math.copysign(1, want)), (col, row["id"])
            else:
                assert have == want, (col, row["id"], have, want)
    # As Python objects: dates and timestamps outside years 1..9999 cannot be; 24:00:00 is 00:00:00.
    for col in TEMPORAL:
        want = [_python_temporal(r, col) for r in rows]
        assert got["python"][col] == want, col


@needs_pandas
@pytest.mark.parametrize("fmt", list(READ_CALLS))
def test_pandas_reads_every_format_as_the_contract_says(
    fmt, zoo, pg_rows, source_url, s3_client, bucket, prefix, tmp_path
):
    for tenant, rows in pg_rows.items():
        manifest = export(
            zoo, source_url, s3_client, bucket, f"{prefix}-{tenant}", tenant_id=tenant, format=fmt
        )
        got = read_with_pandas(fmt, file_bytes(s3_client, bucket, manifest), tmp_path)
        if fmt in ("csv", "csv_excel"):
            check_csv(fmt, got, rows)
        elif fmt in ("jsonl", "json"):
            check_json(got, rows)
        elif fmt == "xlsx":
            check_xlsx(got, rows)
        else:
            check_parquet(got, rows)


def test_formats_page_gives_the_pandas_calls():
    page = (ROOT / "docs" / "formats.md").read_text()
    for call in READ_CALLS.values():
        assert call in page, call


def test_pandas_default_parquet_call_fails_on_bc_dates(tmp_path, zoo, source_url, s3_client, bucket, prefix):
    """Why docs/formats.md says dtype_backend="pyarrow": the default call refuses BC dates."""
    if not READERS_PY.exists() and not ON_CI:
        pytest.skip(".venv-readers missing")
    manifest = export(zoo, source_url, s3_client, bucket, prefix, tenant_id="z-1", format="parquet")
    path = tmp_path / "export.parquet"
    path.write_bytes(file_bytes(s3_client, bucket, manifest))
    done = subprocess.run(
        [str(READERS_PY), "-c", f"import pandas as pd; pd.read_parquet({str(path)!r})"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "out of range" in done.stderr
