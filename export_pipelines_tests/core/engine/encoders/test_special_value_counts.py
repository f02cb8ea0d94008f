"""The manifest counts, per file and column, the values that took a special
encoding (`files[].special_values`), under the keys of the column's rule (`columns[].special_values`).

Expectations are computed here from PostgreSQL's own text of each value (`zoo_expect.load_pg_rows`)
and from SQL counts written independently of `core/engine/encoders/special_values.py`, then compared with what
the exporter put in the manifest, for every format, against the real PostgreSQL and S3.
"""

from __future__ import annotations

import re
from collections import Counter as Tally
from typing import Any

import psycopg
import pytest

from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.encoders import type_contract as tc
from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.requests.catalog import parse_catalog
from export_pipelines.core.requests.request import build_request
from export_pipelines_tests.support.readback import read_manifest
from export_pipelines_tests.support.zoo_expect import excel_number_is_exact, export, pg_text

FORMATS = ("csv", "csv_excel", "jsonl", "json", "parquet", "xlsx", "pdf")
TENANT = "z-2"
NUMBER_TEXT = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
WORDS = {"NaN", "Infinity", "-Infinity", "-0"}


def _year(text: str) -> int:
    return int(text.split("-", 1)[0])


def _beyond_arrow(text: str) -> bool:
    # Arrow's int64 µs end at 294247-01-10T04:00:54.775807Z.
    return text not in ("infinity", "-infinity") and not text.endswith("BC") and _year(text) > 294246


def expected_match(key: str, col: str, fmt: str, text: str | None) -> bool:
    """Does PostgreSQL's text of this value fall under the key? Coded from the type contract's
    words, not from the exporter's SQL."""
    if text is None:
        return False
    if key in (tc.NAN, tc.INFINITY, tc.MINUS_INFINITY, tc.MINUS_ZERO):
        return text == key
    if key in (tc.EXCEL_ROUNDED, tc.EXCEL_ROUNDED_INT):
        return text not in WORDS and not excel_number_is_exact(text)
    if key in (tc.DATE_INFINITY, tc.DATE_MINUS_INFINITY):
        return text == key
    if key == tc.YEARS_OUTSIDE:
        if text in ("infinity", "-infinity"):
            return False
        outside = text.endswith(" BC") or _year(text) > 9999
        return outside and not (fmt == "parquet" and col != "c_date" and _beyond_arrow(text))
    if key == tc.BEYOND_ARROW:
        return _beyond_arrow(text)
    if key == tc.BEFORE_EXCEL_DATES:
        finite_ad = text not in ("infinity", "-infinity") and not text.endswith("BC")
        return finite_ad and _year(text) <= 9999 and text < "1900-03-01"
    if key == tc.FORMULA_TEXT:
        return text[:1] in ("=", "+", "-", "@", "\t", "\r")
    if key == tc.NUMBER_TEXT:
        return text[:1] not in ("=", "+", "-", "@", "\t", "\r") and bool(NUMBER_TEXT.fullmatch(text))
    if key == tc.JSON_NULL:
        return text.strip() == "null"
    if key == tc.MULTI_DIMENSIONAL:
        return text.startswith("{{")
    if key == tc.LOWER_BOUND:
        return text.startswith("[") and not (fmt == "parquet" and "{{" in text)
    if key == tc.XLSX_LONG_TEXT:
        return len(text.encode("utf-16-le")) // 2 > tc.XLSX_MAX_CELL_CHARS
    if key == tc.PDF_LONG_TEXT:
        return len(text) > tc.PDF_MAX_CELL_CHARS
    raise AssertionError(f"no expectation for special value key {key!r}")


def expected_counts(manifest: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per column and key of its rule (as the manifest lists it), the matching values; no zeros."""
    fmt = manifest["format"]
    out: dict[str, dict[str, int]] = {}
    for column in manifest["columns"]:
        col = column["name"]
        for key in column["special_values"]:
            if key == tc.PDF_MANY_LINES:
                continue  # the page layout decides it: checked on its own below
            n = sum(expected_match(key, col, fmt, pg_text(r, col)) for r in rows)
            if n:
                out.setdefault(col, {})[key] = n
    return out


def without_layout_counts(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {c: {k: n for k, n in keys.items() if k != tc.PDF_MANY_LINES} for c, keys in counts.items()}
    return {c: keys for c, keys in out.items() if keys}


def rows_of_file(rows: list[dict[str, Any]], f: dict[str, Any]) -> list[dict[str, Any]]:
    if f["rows"] == 0:
        return []
    return [r for r in rows if int(f["first_key"]) <= int(r["id"]) <= int(f["last_key"])]


@pytest.mark.parametrize("fmt", FORMATS)
def test_manifest_counts_special_values_per_file_and_column(
    fmt, zoo, pg_rows, source_url, s3_client, bucket, prefix
):
    rows = pg_rows[TENANT]
    manifest = export(zoo, source_url, s3_client, bucket, f"{prefix}-{fmt}", tenant_id=TENANT, format=fmt)
    total: dict[str, Tally[str]] = {}
    for f in manifest["files"]:
        assert "special_values" in f, "every file says what needs attention, {} when nothing does"
        assert without_layout_counts(f["special_values"]) == expected_counts(manifest, rows_of_file(rows, f))
        for col, keys in f["special_values"].items():
            rule = next(c for c in manifest["columns"] if c["name"] == col)["special_values"]
            assert list(keys) == [k for k in rule if k in keys], "the keys line up with the column's rule"
            assert all(n > 0 for n in keys.values()), "zero counts are left out"
            total.setdefault(col, Tally()).update(keys)
    # Columns that cannot hold a special value in this format have no entry.
    for plain in ("id", "tenant_id", "c_smallint", "c_integer", "c_boolean", "c_time", "c_uuid"):
        assert plain not in total
    # The headline numbers, straight from SQL over the same tenant.
    with psycopg.connect(source_url) as conn:
        nan, neg_inf = conn.execute(
            "SELECT count(*) FILTER (WHERE c_double::text = 'NaN'), "
            "count(*) FILTER (WHERE c_timestamp::text = '-infinity') FROM type_zoo WHERE tenant_id = %s",
            [TENANT],
        ).fetchone()
    if fmt in ("csv_excel", "xlsx"):  # where NaN is changed (text); csv, JSON, Parquet keep it
        assert nan > 0 and total["c_double"]["NaN"] == nan
    else:
        assert "NaN" not in total.get("c_double", {})
    assert total["c_timestamp"]["-infinity"] == neg_inf > 0
    if fmt in ("jsonl", "json"):
        assert total["c_jsonb"][tc.JSON_NULL] == sum(pg_text(r, "c_jsonb") == "null" for r in rows) > 0
    if fmt == "parquet":
        assert total["c_int_array"][tc.MULTI_DIMENSIONAL] > 0
        assert total["c_timestamp"][tc.BEYOND_ARROW] > 0
    if fmt == "xlsx":
        assert total["c_text"][tc.XLSX_LONG_TEXT] == 2  # the 100 KB cell and the 60,000-unit emoji text
        assert total["c_double"]["-0"] > 0
    if fmt == "pdf":
        assert total["c_text"][tc.PDF_LONG_TEXT] == 2 and total["c_bytea"][tc.PDF_LONG_TEXT] > 0


def test_export_without_special_columns_counts_nothing(zoo, source_url, s3_client, bucket, prefix):
    columns = ["id", "tenant_id", "c_integer", "c_boolean", "c_uuid"]
    manifest = export(zoo, source_url, s3_client, bucket, prefix, tenant_id=TENANT, columns=columns)
    assert all(c["special_values"] == {} for c in manifest["columns"])
    assert [f["special_values"] for f in manifest["files"]] == [{}]


# ------------------------------------------------------------------------------ resume

SPECIAL_TENANT = "s-1"


@pytest.fixture(scope="module")
def big_catalog(source_url):
    """120,000 rows of random text (so CSV spans several 5 MiB parts) with NaN, -0 and infinite
    timestamps spread over them."""
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(
            """
            DROP TABLE IF EXISTS public.special_big;
            CREATE TABLE public.special_big (
                tenant_id text NOT NULL, id bigint NOT NULL, c_double double precision,
                c_ts timestamptz, c_note text, PRIMARY KEY (tenant_id, id));
            INSERT INTO public.special_big
            SELECT 's-1', g,
                   CASE WHEN g % 7 = 0 THEN 'NaN' WHEN g % 11 = 0 THEN '-0'::float8 ELSE g / 3.0 END,
                   CASE WHEN g % 13 = 0 THEN 'infinity' WHEN g % 17 = 0 THEN '0044-03-15 BC'
                        ELSE '2024-01-01'::timestamptz + g * interval '1 minute' END,
                   md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text)
            FROM generate_series(1, 120000) AS g;
            """
        )
    return parse_catalog(
        {
            "resources": {
                "special_big": {
                    "table": "public.special_big",
                    "tenant_column": "tenant_id",
                    "key": "id",
                    "columns": ["id", "tenant_id", "c_double", "c_ts", "c_note"],
                }
            }
        },
        "special_big catalog",
    )


class Crash(Exception):
    pass


@pytest.fixture
def checkpoints(source_url):
    store = CheckpointStore(source_url).migrate_once()
    yield store
    store.close()


def _run(catalog, source_url, client, bucket, prefix, export_id, store=None, crash_after=None, **kwargs):
    request = build_request(
        catalog, resource="special_big", tenant_id=SPECIAL_TENANT, export_id=export_id, **kwargs
    )
    plan = plan_export(source_url, catalog, request, prefix, checkpoints=store)
    seen = 0

    def on_progress(_: Any) -> None:
        nonlocal seen
        seen += 1
        if crash_after is not None and seen >= crash_after:
            raise Crash

    clear_success_marker(client, bucket, plan.location)
    outcome = run_export(
        plan,
        conninfo=source_url,
        catalog=catalog,
        s3_client=client,
        bucket=bucket,
        part_size=5 << 20,
        on_progress=on_progress,
        checkpoints=store,
        abort_on_error=False,
    )
    done = finalize_export(client, bucket, plan, outcome, store)
    return read_manifest(client, bucket, done.manifest_key)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"format": "csv_excel"},  # continued mid-file (NaN and -0 are counted in this format)
        {"format": "jsonl", "compression": "none", "max_rows_per_file": 50_000},  # kept files + continued
        {"format": "parquet", "max_rows_per_file": 50_000},  # kept files, the open one rewritten
    ],
    ids=["csv-excel-mid-file", "jsonl-files", "parquet-files"],
)
def test_resumed_file_counts_equal_an_uninterrupted_run(
    kwargs, big_catalog, source_url, s3_client, bucket, prefix, checkpoints
):
    clean = _run(big_catalog, source_url, s3_client, bucket, prefix, "clean", **kwargs)
    with psycopg.connect(source_url) as conn:
        nan, zero, inf, bc = conn.execute(
            "SELECT count(*) FILTER (WHERE c_double::text = 'NaN'), count(*) FILTER (WHERE c_double::text = '-0'), "
            "count(*) FILTER (WHERE c_ts::text = 'infinity'), count(*) FILTER (WHERE c_ts::text LIKE '%% BC') "
            "FROM special_big WHERE tenant_id = %s",
            [SPECIAL_TENANT],
        ).fetchone()
    summed: dict[str, Tally[str]] = {}
    for f in clean["files"]:
        for col, keys in f["special_values"].items():
            summed.setdefault(col, Tally()).update(keys)
        with psycopg.connect(source_url) as conn:  # each file: its own key range's counts
            file_inf = conn.execute(
                "SELECT count(*) FROM special_big WHERE tenant_id = %s AND id BETWEEN %s AND %s "
                "AND c_ts::text = 'infinity'",
                [SPECIAL_TENANT, int(f["first_key"]), int(f["last_key"])],
            ).fetchone()[0]
        assert f["special_values"]["c_ts"]["infinity"] == file_inf > 0
    assert summed["c_ts"]["infinity"] == inf and summed["c_ts"][tc.YEARS_OUTSIDE] == bc
    if kwargs["format"] == "csv_excel":
        assert summed["c_double"]["NaN"] == nan and summed["c_double"]["-0"] == zero > 0
    else:  # csv, JSON and Parquet keep NaN and -0 as they are: nothing to count
        assert "c_double" not in summed
    assert sum(f["parts"] for f in clean["files"]) > 1

    # One file: crash after its first part (continued mid-way); several: after the first file and
    # a part of the second (the first is kept, the second continued or, for Parquet, rewritten).
    crash_after = 1 if "max_rows_per_file" not in kwargs else clean["files"][0]["parts"] + 1
    with pytest.raises(Crash):
        _run(
            big_catalog,
            source_url,
            s3_client,
            bucket,
            prefix,
            "resumed",
            checkpoints,
            crash_after=crash_after,
            **kwargs,
        )
    resumed = _run(big_catalog, source_url, s3_client, bucket, prefix, "resumed", checkpoints, **kwargs)
    assert [f["sha256"] for f in resumed["files"]] == [f["sha256"] for f in clean["files"]]
    assert [f["special_values"] for f in resumed["files"]] == [f["special_values"] for f in clean["files"]]
    if "max_rows_per_file" not in kwargs:
        assert resumed["files"][0]["resumed_at_part"] == 2, "the file was continued mid-way"
    assert any(f.get("special_values_recounted") for f in resumed["files"])
