"""A feed with filters: rows that move into the filter arrive as upserts, rows that leave it (updated
to another value, deleted, deleted and inserted again with another value) as deletes; replaying the
deliveries gives exactly the tenant's rows that match the filter now. CSV and Parquet alike."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from typing import Any

import psycopg
import pytest
import yaml

from export_pipelines.core.engine.change_tracking import install
from export_pipelines.core.engine.feed_delivery import deliver, next_window
from export_pipelines.core.requests.catalog import parse_catalog
from export_pipelines.core.requests.request import build_request

TENANT = "t-filtered"
CATALOG = parse_catalog(
    yaml.safe_load(
        """
resources:
  filtered:
    table: public.feed_filtered_items
    tenant_column: tenant_id
    key: id
    columns: [id, tenant_id, status, val]
    filters: [status]
    change_tracking: true
    primary_key: [tenant_id, id]
"""
    ),
    "test.yaml",
)
WANTED = ["open", "paid"]


@pytest.fixture
def tracked(source_url: str) -> str:
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.feed_filtered_items")
        conn.execute(
            "CREATE TABLE public.feed_filtered_items (tenant_id text NOT NULL, id int NOT NULL, status text, "
            "val int NOT NULL, PRIMARY KEY (tenant_id, id))"
        )
        conn.execute(
            "INSERT INTO public.feed_filtered_items SELECT %s, g, (ARRAY['open','paid','void'])[1 + g %% 3], g "
            "FROM generate_series(1, 300) g",
            [TENANT],
        )
    install(source_url, CATALOG.resource("filtered"))
    return source_url


def delivered_rows(s3_client: Any, bucket: str, done: Any, fmt: str) -> list[dict[str, str]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, str]] = []
    for f in done.manifest["files"]:
        body = s3_client.get_object(Bucket=bucket, Key=f["key"])["Body"].read()
        if fmt == "csv":
            rows += list(csv.DictReader(io.StringIO(body.decode())))
        else:
            rows += [
                {k: "" if v is None else str(v) for k, v in r.items()}
                for r in pq.read_table(io.BytesIO(body)).to_pylist()
            ]
    return rows


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_rows_leaving_the_filter_are_deleted_and_rows_entering_it_upserted(tracked, s3_client, bucket, fmt):
    def delivery(sequence: int, previous: Any) -> Any:
        request = build_request(
            CATALOG,
            tenant_id=TENANT,
            resource="filtered",
            format=fmt,
            compression="none",
            columns=None,
            filters={"status": WANTED},
            export_id=f"filtered-{fmt}-{sequence}",
        )
        window = next_window("f", sequence, "incremental", previous)
        return deliver(
            tracked,
            CATALOG,
            replace(request, feed=window),
            s3_client=s3_client,
            bucket=bucket,
            prefix="filtered",
        )

    replica: dict[str, tuple[str, str]] = {}

    def apply(rows: list[dict[str, str]]) -> None:
        assert len({r["id"] for r in rows}) == len(rows), "a key appears twice in one delivery"
        for r in rows:
            if r["_op"] == "upsert":
                assert r["status"] in WANTED
                replica[r["id"]] = (r["status"], r["val"])
            else:
                assert r["_op"] == "delete" and r["status"] == "" and r["val"] == ""
                replica.pop(r["id"], None)

    first = delivery(1, None)
    apply(delivered_rows(s3_client, bucket, first, fmt))
    with psycopg.connect(tracked, autocommit=True) as conn:
        run = conn.execute
        run(
            "UPDATE feed_filtered_items SET status = 'void' WHERE tenant_id = %s AND id BETWEEN 1 AND 20",
            [TENANT],
        )
        run(
            "UPDATE feed_filtered_items SET status = 'open' WHERE tenant_id = %s AND id BETWEEN 21 AND 40",
            [TENANT],
        )
        run(
            "UPDATE feed_filtered_items SET status = NULL WHERE tenant_id = %s AND id BETWEEN 41 AND 45",
            [TENANT],
        )
        run(
            "UPDATE feed_filtered_items SET val = -val WHERE tenant_id = %s AND id BETWEEN 46 AND 60",
            [TENANT],
        )
        run("DELETE FROM feed_filtered_items WHERE tenant_id = %s AND id BETWEEN 61 AND 80", [TENANT])
        run("DELETE FROM feed_filtered_items WHERE tenant_id = %s AND id BETWEEN 81 AND 90", [TENANT])
        run(
            "INSERT INTO feed_filtered_items SELECT %s, g, 'void', g FROM generate_series(81, 85) g", [TENANT]
        )
        run(
            "INSERT INTO feed_filtered_items SELECT %s, g, 'paid', g FROM generate_series(86, 90) g", [TENANT]
        )
        run(
            "INSERT INTO feed_filtered_items SELECT %s, g, 'open', g FROM generate_series(301, 310) g",
            [TENANT],
        )
        run(
            "INSERT INTO feed_filtered_items SELECT %s, g, 'void', g FROM generate_series(311, 320) g",
            [TENANT],
        )
        wanted = conn.execute(
            "SELECT id::text, status, val::text FROM feed_filtered_items WHERE tenant_id = %s AND status = ANY(%s)",
            [TENANT, WANTED],
        ).fetchall()
    second = delivery(2, first.record)
    rows = delivered_rows(s3_client, bucket, second, fmt)
    assert second.record.mode == "incremental"
    # Only what changed: the 90 keys touched and the 20 inserted, not the 300 rows.
    assert {int(r["id"]) for r in rows} <= set(range(1, 91)) | set(range(301, 321))
    apply(rows)
    assert replica == {key: (status, val) for key, status, val in wanted}
