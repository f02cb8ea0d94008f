"""The three ways docs/feeds.md tells tenants to apply deliveries (DuckDB, pandas, SQL MERGE), run as
written there on real deliveries (a full one, then an incremental one after updates, a delete, an
insert and a delete-then-reinsert), each compared with the tenant's rows now."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from export_pipelines.core.engine.change_tracking import install
from export_pipelines.core.engine.feed_delivery import DeliveryRecord, deliver, next_window
from export_pipelines.core.requests.request import build_request

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "feeds.md").read_text()
READERS_PY = ROOT / ".venv-readers" / "bin" / "python"
ON_CI = os.environ.get("CI") == "true"
TENANT = "t-011"
COLUMNS = ["id", "tenant_id", "created_at", "status", "amount", "currency", "customer_email", "note", "attrs"]


def example(title: str) -> str:
    match = re.search(rf'```\w+ title="{re.escape(title)}"\n(.*?)```', DOC, re.S)
    assert match, f"docs/feeds.md has no example {title}"
    return match.group(1)


def fetch(s3_client: Any, bucket: str, manifest_key: str, folder: Path) -> tuple[dict[str, Any], list[str]]:
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in manifest["files"]:
        path = folder / f["key"].rsplit("/", 1)[1]
        path.write_bytes(s3_client.get_object(Bucket=bucket, Key=f["key"])["Body"].read())
        paths.append(str(path))
    return manifest, paths


def rows_of(paths: list[str]) -> list[list[str]]:
    out = []
    for p in paths:
        out.extend(list(csv.reader(io.StringIO(gzip.decompress(Path(p).read_bytes()).decode())))[1:])
    return out


@pytest.fixture(scope="module")
def deliveries(source_url, catalog, s3_client, bucket, tmp_path_factory):
    """Delivery 1 (full), changes, delivery 2 (incremental), and the rows now as a full delivery."""
    install(source_url, catalog.resource("orders"))
    tmp = tmp_path_factory.mktemp("feeds")
    prefix = "feed-docs"
    previous: DeliveryRecord | None = None
    out = {}

    def one(n: int, mode: str) -> None:
        nonlocal previous
        request = build_request(
            catalog,
            tenant_id=TENANT,
            resource="orders",
            format="csv",
            compression="gzip",
            columns=None,
            filters={},
            export_id=f"docs-{os.getpid()}-{n}",
        )
        done = deliver(
            source_url,
            catalog,
            replace(request, feed=next_window("docs", n, mode, previous)),
            s3_client=s3_client,
            bucket=bucket,
            prefix=prefix,
        )
        previous = done.record
        out[n] = fetch(s3_client, bucket, done.finalized.manifest_key, tmp / str(n))

    one(1, "incremental")
    with psycopg.connect(source_url, autocommit=True) as conn:
        ids = [
            r[0]
            for r in conn.execute("SELECT id FROM orders WHERE tenant_id = %s ORDER BY id LIMIT 4", [TENANT])
        ]
        conn.execute(
            "UPDATE orders SET note = 'edited, \"quoted\"' WHERE tenant_id = %s AND id = %s", [TENANT, ids[0]]
        )
        conn.execute(
            "UPDATE orders SET amount = amount + 1 WHERE tenant_id = %s AND id = %s", [TENANT, ids[1]]
        )
        conn.execute("DELETE FROM orders WHERE tenant_id = %s AND id = %s", [TENANT, ids[2]])
        with conn.transaction():  # delete-then-reinsert of one key
            row = conn.execute(
                f"DELETE FROM orders WHERE tenant_id = %s AND id = %s RETURNING {', '.join(COLUMNS)}",
                [TENANT, ids[3]],
            ).fetchone()
            conn.execute(
                "INSERT INTO orders (id, tenant_id, created_at, status, amount, currency, customer_email, note, attrs) "
                "VALUES (%s, %s, %s, 'refunded', %s, %s, %s, 'reinserted', %s)",
                [row[0], row[1], row[2], row[4], row[5], row[6], psycopg.types.json.Jsonb(row[8])],
            )
        conn.execute(
            "INSERT INTO orders (id, tenant_id, created_at, status, amount, currency, customer_email, note, attrs) "
            "SELECT max(id) + 1000000, %s, now(), 'paid', 12.5, 'EUR', 'new@example.com', 'new', '{}' FROM orders",
            [TENANT],
        )
    one(2, "incremental")
    one(3, "full")  # the rows now, as a full delivery writes them: what each method must end with
    assert out[1][0]["changes"]["mode"] == "full" and out[2][0]["changes"]["mode"] == "incremental"
    assert (out[2][0]["changes"]["upserts"], out[2][0]["changes"]["deletes"]) == (4, 1)
    return out


def expected(deliveries) -> list[list[str]]:
    return sorted(r[:-1] for r in rows_of(deliveries[3][1]))


def test_duckdb_example(deliveries):
    sql = example("apply_with_duckdb.sql")
    full_part, incremental_part = sql.split("-- Each incremental delivery", 1)
    con = duckdb.connect()
    con.execute(full_part.format(full_files=json.dumps(deliveries[1][1]).replace('"', "'")))
    con.execute(
        incremental_part.split("\n", 1)[1].format(files=json.dumps(deliveries[2][1]).replace('"', "'"))
    )
    got = sorted(
        [["" if v is None else v for v in r] for r in con.execute("SELECT * FROM orders").fetchall()]
    )
    assert got == expected(deliveries)


@pytest.mark.skipif(
    not READERS_PY.exists() and not ON_CI, reason=".venv-readers missing (scripts/test_readers.sh)"
)
def test_pandas_example(deliveries, tmp_path):
    script = tmp_path / "apply.py"
    script.write_text(
        example("apply_with_pandas.py")
        + "\nimport json, sys\n"
        + "held = None\n"
        + "for manifest, paths in json.load(open(sys.argv[1])):\n"
        + "    held = apply_delivery(held, paths, manifest)\n"
        + "print(json.dumps(held.astype(str).values.tolist()))\n"
    )
    plan = tmp_path / "deliveries.json"
    plan.write_text(json.dumps([deliveries[1], deliveries[2]]))
    out = subprocess.run(
        [str(READERS_PY), str(script), str(plan)], capture_output=True, text=True, check=True
    )
    assert sorted(json.loads(out.stdout)) == expected(deliveries)


def test_sql_merge_example(deliveries, source_url):
    merge = example("apply_with_merge.sql")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS feed_docs_tenant CASCADE")
        conn.execute("CREATE SCHEMA feed_docs_tenant")
        conn.execute("SET search_path = feed_docs_tenant, public")
        conn.execute("CREATE TABLE my_orders (LIKE public.orders)")
        conn.execute("ALTER TABLE my_orders DROP COLUMN IF EXISTS _export_xid")
        conn.execute("CREATE TABLE delivery AS SELECT * FROM my_orders WITH NO DATA")  # no NOT NULLs
        conn.execute("ALTER TABLE delivery ADD COLUMN _op text")

        def load(table: str, paths: list[str]) -> None:
            cols = ", ".join([*COLUMNS, "_op"])
            with conn.cursor().copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT csv, HEADER MATCH)") as copy:
                for p in paths:
                    copy.write(gzip.decompress(Path(p).read_bytes()))

        load("delivery", deliveries[1][1])  # the full delivery: load it as it is
        conn.execute(
            f"INSERT INTO my_orders ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM delivery"
        )
        conn.execute("TRUNCATE delivery")
        load("delivery", deliveries[2][1])
        conn.execute(merge)
        differ = conn.execute(
            f"SELECT count(*) FROM ((SELECT {', '.join(COLUMNS)} FROM my_orders EXCEPT ALL "
            f"SELECT {', '.join(COLUMNS)} FROM public.orders WHERE tenant_id = %s) UNION ALL "
            f"(SELECT {', '.join(COLUMNS)} FROM public.orders WHERE tenant_id = %s EXCEPT ALL "
            f"SELECT {', '.join(COLUMNS)} FROM my_orders)) d",
            [TENANT, TENANT],
        ).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM my_orders").fetchone()[0]
        conn.execute("DROP SCHEMA feed_docs_tenant CASCADE")
    assert differ == 0 and total == len(expected(deliveries))
