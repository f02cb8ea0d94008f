"""An incremental delivery evaluates its change relation once per file: the reader's session copies
it into a temp table in the file's snapshot, and the batch bounds, the COPY and the delete count
read that. Formats read through ADBC do the same in each of their two sessions (ADBC's, which reads
the rows, and psycopg's, which finds the bounds and counts), in one snapshot. Both deliver the same
rows."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import psycopg
import pytest
import yaml

from export_pipelines.core.engine.change_tracking import install
from export_pipelines.core.engine.feed_delivery import deliver, next_window
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.engine.query import ExportQuery
from export_pipelines.core.engine.sources import ArrowSource, PgCsvSource
from export_pipelines.core.requests.catalog import parse_catalog
from export_pipelines.core.requests.request import build_request

TENANT = "once%t"  # a % in the tenant: the relation's literals are escaped for a statement with params
CATALOG = parse_catalog(
    yaml.safe_load(
        """
resources:
  once:
    table: public.feed_once_items
    tenant_column: tenant_id
    key: id
    columns: [id, tenant_id, val]
    change_tracking: true
    primary_key: [tenant_id, id]
"""
    ),
    "test.yaml",
)


@pytest.fixture(scope="module")
def tracked(source_url: str) -> str:
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.feed_once_items")
        conn.execute(
            "CREATE TABLE public.feed_once_items (tenant_id text NOT NULL, id int NOT NULL, val text, "
            "PRIMARY KEY (tenant_id, id))"
        )
        conn.execute(
            "INSERT INTO public.feed_once_items SELECT %s, g, 'v' || g FROM generate_series(1, 3000) g",
            [TENANT],
        )
    install(source_url, CATALOG.resource("once"))
    return source_url


def request(fmt: str, export_id: str, window: Any) -> Any:
    base = build_request(
        CATALOG,
        tenant_id=TENANT,
        resource="once",
        format=fmt,
        compression="none",
        columns=None,
        filters={},
        export_id=export_id,
    )
    return replace(base, feed=window)


def rows_of(s3_client: Any, bucket: str, done: Any, fmt: str) -> dict[str, tuple[str, str]]:
    import csv

    import pyarrow.parquet as pq

    out: dict[str, tuple[str, str]] = {}
    for f in done.manifest["files"]:
        body = s3_client.get_object(Bucket=bucket, Key=f["key"])["Body"].read()
        if fmt == "csv":
            records = list(csv.DictReader(io.StringIO(body.decode())))
        else:
            records = [
                {k: "" if v is None else str(v) for k, v in r.items()}
                for r in pq.read_table(io.BytesIO(body)).to_pylist()
            ]
        for r in records:
            assert r["id"] not in out, "a key appears twice in one delivery"
            out[r["id"]] = (r["_op"], r["val"])
    return out


def test_incremental_delivery_reads_its_change_set_once_and_delivers_the_same_rows(
    tracked, s3_client, bucket
):
    first = deliver(
        tracked,
        CATALOG,
        request("csv", "once-1", next_window("f", 1, "incremental", None)),
        s3_client=s3_client,
        bucket=bucket,
        prefix="once",
    )
    with psycopg.connect(tracked, autocommit=True) as conn:
        conn.execute(
            "UPDATE feed_once_items SET val = 'changed' WHERE tenant_id = %s AND id %% 3 = 0", [TENANT]
        )
        conn.execute("DELETE FROM feed_once_items WHERE tenant_id = %s AND id %% 100 = 1", [TENANT])
        conn.execute("INSERT INTO feed_once_items VALUES (%s, 5000, NULL)", [TENANT])
    window = next_window("f", 2, "incremental", first.record)

    # The reader's session: the temp table holds the delivery's rows while the file is read.
    plan = plan_export(tracked, CATALOG, request("csv", "once-probe", window), "once")
    query = ExportQuery(CATALOG.resource("once"), plan.request, plan.types)
    assert query.can_materialize
    source = PgCsvSource(tracked, query, None)
    try:
        source.begin_file()
        assert source.query.materialized
        held = source.conn.execute("SELECT count(*) FROM pg_temp._export_feed_delivery").fetchone()
        assert held == (plan.rows_total,)
        key_range = source.next_range(None, 10_000)
        assert key_range is not None and key_range.rows == plan.rows_total
        source.end_file()
        assert not source.query.materialized  # the temp table went with the commit
    finally:
        source.close()
    # Parquet's two sessions: each holds the same rows in its own temp table, in one snapshot.
    arrow = ArrowSource(tracked, query, None)
    try:
        arrow.begin_file()
        assert arrow.query.materialized and arrow.bounds.query.materialized
        read = sum(batch.num_rows for batch in arrow.read(arrow.next_range(None, 10_000)))
        assert read == plan.rows_total
        arrow.end_file()
        assert not arrow.query.materialized and not arrow.bounds.query.materialized
    finally:
        arrow.close()
    # A full delivery reads the table itself: nothing to materialize.
    full = plan_export(
        tracked, CATALOG, request("csv", "once-full", next_window("f", 1, "full", None)), "once"
    )
    assert not ExportQuery(CATALOG.resource("once"), full.request, full.types).can_materialize

    by_csv = deliver(
        tracked,
        CATALOG,
        request("csv", "once-2csv", window),
        s3_client=s3_client,
        bucket=bucket,
        prefix="once",
    )
    by_parquet = deliver(
        tracked,
        CATALOG,
        request("parquet", "once-2pq", window),
        s3_client=s3_client,
        bucket=bucket,
        prefix="once",
    )
    csv_rows, parquet_rows = (
        rows_of(s3_client, bucket, by_csv, "csv"),
        rows_of(s3_client, bucket, by_parquet, "parquet"),
    )
    assert csv_rows == parquet_rows
    # 1,000 updated (every third), 30 deleted (ten of them updated first), one inserted.
    assert len(csv_rows) == 1000 + 30 - 10 + 1
    assert csv_rows["3"] == ("upsert", "changed") and csv_rows["101"] == ("delete", "")
    assert csv_rows["5000"] == ("upsert", "")
    assert by_csv.record.deletes == by_parquet.record.deletes == 30
