"""What PostgreSQL says each `type_zoo` value is, and what each format must therefore hold.

Expectations are derived from PostgreSQL's own output (text, psycopg values, instants computed
in SQL) and coded here independently of the exporter's code.
"""

from __future__ import annotations

import base64
import gzip
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.requests.request import build_request
from export_pipelines_tests.support import type_zoo
from export_pipelines_tests.support.readback import get_bytes, read_manifest

EXCEL_CELL_UNITS = 32_767

# Values Python's date/datetime cannot hold (BC, infinity, year 10000+): text only.
NOT_PYTHON = {"c_date", "c_time", "c_timestamp", "c_timestamptz", "c_interval", "c_numeric", "c_decimal"}
NUMBERS = {
    "c_smallint",
    "c_integer",
    "c_bigint",
    "c_numeric",
    "c_decimal",
    "c_numeric_wide",
    "c_real",
    "c_double",
}


def load_pg_rows(source_url: str) -> dict[str, list[dict[str, Any]]]:
    """Per tenant, in key order: each column as PostgreSQL's text output (`…`), as psycopg's
    Python value (`…:py`), and the instants Parquet must hold, computed by PostgreSQL."""
    import psycopg

    cols = []
    for c in type_zoo.COLUMNS:
        cols.append(f"{c}::text AS {c}")
        cols.append(f'{c} AS "{c}:py"' if c not in NOT_PYTHON else f'NULL AS "{c}:py"')
    micros = "CASE WHEN isfinite({c}) THEN (extract(epoch FROM {c}) * 1000000)::numeric END"
    cols += [
        micros.format(c="c_timestamp") + ' AS "c_timestamp:us"',
        micros.format(c="c_timestamptz") + ' AS "c_timestamptz:us"',
        "CASE WHEN isfinite(c_date) THEN c_date - DATE '1970-01-01' END AS \"c_date:days\"",
        '(extract(epoch FROM c_time) * 1000000)::bigint AS "c_time:us"',
    ]
    out = {}
    with psycopg.connect(source_url, options="-c TimeZone=UTC -c IntervalStyle=iso_8601") as conn:
        conn.execute("SET extra_float_digits = 1")
        for tenant in type_zoo.TENANTS:
            cur = conn.execute(
                f"SELECT {', '.join(cols)} FROM type_zoo WHERE tenant_id = %s ORDER BY type_zoo.id", [tenant]
            )
            names = [d.name for d in cur.description]
            out[tenant] = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return out


def export(catalog, source_url, client, bucket, prefix, **kwargs: Any) -> dict[str, Any]:
    request = build_request(catalog, resource="type_zoo", export_id="zoo", **kwargs)
    plan = plan_export(source_url, catalog, request, prefix)
    clear_success_marker(client, bucket, plan.location)
    outcome = run_export(plan, conninfo=source_url, catalog=catalog, s3_client=client, bucket=bucket)
    done = finalize_export(client, bucket, plan, outcome)
    return read_manifest(client, bucket, done.manifest_key)


def file_bytes(client, bucket, manifest) -> bytes:
    (f,) = manifest["files"]
    raw = get_bytes(client, bucket, f["key"])
    return gzip.decompress(raw) if f["key"].endswith(".gz") else raw


def pg_text(row: dict[str, Any], col: str) -> str | None:
    """What COPY writes for the column (bool as t/f, bytea as base64, char(n) padded)."""
    py = row[f"{col}:py"]
    if col == "c_boolean":
        return None if py is None else ("t" if py else "f")
    if col == "c_bytea":
        return None if py is None else base64.b64encode(py).decode()
    if col == "c_char":
        return py
    return row[col]


def excel_number_is_exact(text: str) -> bool:
    """Excel keeps 15 significant digits, has no -0/NaN/Infinity and nothing below ~1e-307."""
    if not re.match(r"-?[0-9]", text) or text == "-0":
        return False
    digits = text.lower().split("e")[0].replace("-", "").replace(".", "").lstrip("0")
    value = Decimal(text)
    return len(digits) <= 15 and not (value != 0 and abs(value) < Decimal("1e-300"))


def excel_csv_value(col: str, text: str | None) -> str | None:
    if text is None:
        return None
    if col in ("c_smallint", "c_integer", "c_boolean", "id"):
        return text
    if col in NUMBERS:
        return text if excel_number_is_exact(text) else f'="{text}"'
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    # Text Excel would turn into a number stays text.
    return f'="{text}"' if re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", text) else text


def excel_unescape(text: str) -> str:
    """Excel's _xHHHH_ escapes (ECMA-376 ST_Xstring); openpyxl leaves them as they are."""
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), text)


def excel_cut(text: str) -> str:
    units = text.encode("utf-16-le")
    return units[: 2 * EXCEL_CELL_UNITS].decode("utf-16-le", errors="ignore")


def xlsx_expected(row: dict[str, Any], col: str) -> Any:
    text = pg_text(row, col)
    if text is None:
        return None
    if col in ("c_smallint", "c_integer", "id"):
        return int(text)
    if col in NUMBERS:
        return Decimal(text) if excel_number_is_exact(text) else text
    if col == "c_boolean":
        return text == "t"
    if col == "c_date" and re.fullmatch(r"\d{4}-\d\d-\d\d", text) and "1900-03-01" <= text <= "9999-12-31":
        return datetime.fromisoformat(text)
    return excel_cut(text)
