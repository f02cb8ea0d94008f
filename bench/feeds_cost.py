"""What an incremental feed delivery costs next to a full export, and what change tracking costs.

    .venv/bin/python bench/feeds_cost.py --rows 1000000            # the big tenant t-big, 1 % changed
    .venv/bin/python bench/feeds_cost.py --rows 10000000 --backfill  # and the online backfill

Uses bench/run.py's database for the size (`exports_bench_<rows>`, built once). Steps:
1. `install` change tracking on orders online (column, triggers, index CONCURRENTLY; with
   --backfill the batched backfill of existing rows), timed;
2. a full delivery of t-big (the first delivery of a feed), timed, pages read measured;
3. for each change pattern, 1 % of t-big's rows changed (updates; a tenth of them deletes), then an
   incremental delivery, timed, pages read measured: `random` (keys spread over the table: about one
   heap page per changed row) and `clustered` (one run of consecutive keys: few pages);
4. the change relation's plan with EXPLAIN (ANALYZE, BUFFERS);
5. tombstones pruned once the feed has moved past them.

Pages read: shared_blks_hit + shared_blks_read of the delivery's statements, from pg_statio deltas
of the table and its indexes (heap and index blocks), compared with the table's heap pages
(pg_relation_size / block size). Results go to bench/results/feeds-<rows>.json and the console.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ensure_data

from export_pipelines.core.engine.change_tracking import install, prune_tombstones
from export_pipelines.core.engine.feed_delivery import deliver, next_window
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.engine.query import ExportQuery
from export_pipelines.core.requests.catalog import parse_catalog
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.storage.migrations import migrate
from export_pipelines.core.storage.s3 import make_s3_client
from export_pipelines.settings import Settings

TENANT = "t-big"
CATALOG = parse_catalog(
    {
        "resources": {
            "orders": {
                "table": "public.orders",
                "tenant_column": "tenant_id",
                "key": "id",
                "time_column": "created_at",
                "columns": [
                    "id",
                    "tenant_id",
                    "created_at",
                    "status",
                    "amount",
                    "currency",
                    "customer_email",
                    "note",
                    "attrs",
                ],
                "change_tracking": True,
                "primary_key": ["tenant_id", "id"],
            }
        }
    },
    "bench",
)


def blocks(conn: psycopg.Connection[Any]) -> int:
    """Heap + index blocks touched (hit or read) of orders so far (pg_statio, this database)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT coalesce(heap_blks_read, 0) + coalesce(heap_blks_hit, 0) + coalesce(idx_blks_read, 0) "
        "+ coalesce(idx_blks_hit, 0) FROM pg_statio_user_tables WHERE relname = 'orders'"
    ).fetchone()
    return int(row[0]) if row else 0


def settle_stats() -> None:
    time.sleep(1.2)  # backends report their counters when idle, at most every second


def one_delivery(url: str, s3: Any, bucket: str, feed: Any, export_id: str) -> dict[str, Any]:
    request = build_request(
        CATALOG,
        tenant_id=TENANT,
        resource="orders",
        format="csv",
        compression="gzip",
        columns=None,
        filters={},
        export_id=export_id,
    )
    with psycopg.connect(url, autocommit=True) as stats:
        settle_stats()
        before = blocks(stats)
        started = time.perf_counter()
        done = deliver(
            url, CATALOG, replace(request, feed=feed), s3_client=s3, bucket=bucket, prefix="feeds-bench"
        )
        seconds = time.perf_counter() - started
        settle_stats()
        touched = blocks(stats) - before
    return {
        "export_id": export_id,
        "mode": done.record.mode,
        "seconds": round(seconds, 2),
        "rows": done.outcome.rows,
        "upserts": done.record.upserts,
        "deletes": done.record.deletes,
        "blocks_touched": touched,
        "record": done.record,
    }


def change(url: str, pattern: str, share: float, tenant_rows: int) -> int:
    n = max(1, int(tenant_rows * share))
    with psycopg.connect(url, autocommit=True) as conn:
        if pattern == "random":
            keys = "SELECT id FROM orders WHERE tenant_id = %s ORDER BY random() LIMIT %s"

            params: list[Any] = [TENANT, n]
        else:
            keys = (
                "SELECT id FROM orders WHERE tenant_id = %s AND id > (SELECT percentile_disc(0.3) "
                "WITHIN GROUP (ORDER BY id) FROM orders WHERE tenant_id = %s) ORDER BY id LIMIT %s"
            )
            params = [TENANT, TENANT, n]
        conn.execute("CREATE TEMP TABLE chg (id bigint)")
        conn.execute(f"INSERT INTO chg {keys}", params)
        conn.execute(
            "UPDATE orders o SET note = 'changed ' || now() FROM chg "
            "WHERE o.tenant_id = %s AND o.id = chg.id AND chg.id %% 10 <> 0",
            [TENANT],
        )
        conn.execute(
            "DELETE FROM orders o USING chg WHERE o.tenant_id = %s AND o.id = chg.id AND chg.id %% 10 = 0",
            [TENANT],
        )
        conn.execute("DROP TABLE chg")
    return n


def explain(url: str, previous: Any) -> list[str]:
    """The plan of the change relation's one evaluation, as the reader runs it: into the file's
    temp table (then every statement of the file reads that)."""
    request = build_request(
        CATALOG,
        tenant_id=TENANT,
        resource="orders",
        format="csv",
        compression="gzip",
        columns=None,
        filters={},
        export_id="explain",
    )
    # The previous delivery's record, tracking id included: a window without it is made full.
    window = next_window("bench", previous.sequence + 1, "incremental", previous)
    plan = plan_export(url, CATALOG, replace(request, feed=window), "x")
    assert plan.request.feed is not None and plan.request.feed.mode == "incremental"
    query = ExportQuery(CATALOG.resource("orders"), plan.request, plan.types)
    stmt = query.materialize()[0]
    with psycopg.connect(url, autocommit=True) as conn:
        text = psycopg.ClientCursor(conn).mogrify(stmt, [])
        return [r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + text)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--share", type=float, default=0.01, help="share of the tenant's rows changed")
    parser.add_argument("--backfill", action="store_true", help="also time the batched backfill")
    parser.add_argument("--patterns", default="random,clustered")
    args = parser.parse_args()
    env = dict(os.environ)
    settings = Settings.from_env(env)
    url = ensure_data(env, args.rows, f"exports_bench_{args.rows}")
    s3 = make_s3_client(**settings.s3_client_options())
    bucket = settings.require_bucket()
    migrate(url)
    out: dict[str, Any] = {"rows": args.rows, "share": args.share, "load_before": os.getloadavg()}
    started = time.perf_counter()
    done = install(url, CATALOG.resource("orders"), backfill=args.backfill, batch_rows=20_000)
    out["install"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "backfilled_rows": done.backfilled_rows,
    }
    print("install:", out["install"], flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE orders")
        tenant_rows = conn.execute("SELECT count(*) FROM orders WHERE tenant_id = %s", [TENANT]).fetchone()[0]
        heap_pages = conn.execute(
            "SELECT pg_relation_size('orders') / current_setting('block_size')::int"
        ).fetchone()[0]
    out["tenant_rows"], out["table_heap_pages"] = tenant_rows, heap_pages
    full = one_delivery(url, s3, bucket, next_window("bench", 1, "incremental", None), "full-1")
    previous = full.pop("record")
    out["full"] = full
    print("full:", full, flush=True)
    out["incremental"] = []
    for i, pattern in enumerate(args.patterns.split(","), start=2):
        changed = change(url, pattern, args.share, tenant_rows)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE orders")
        with psycopg.connect(url, autocommit=True) as conn:
            # The heap pages the delivery's join visits: where the changed rows' current versions lie.
            heap_pages_changed = conn.execute(
                "SELECT count(DISTINCT (ctid::text::point)[0]) FROM orders WHERE tenant_id = %s "
                "AND _export_xid >= pg_snapshot_xmin(%s::pg_snapshot) "
                "AND NOT pg_visible_in_snapshot(_export_xid, %s::pg_snapshot)",
                [TENANT, previous.snapshot, previous.snapshot],
            ).fetchone()[0]
        inc = one_delivery(url, s3, bucket, next_window("bench", i, "incremental", previous), f"inc-{i}")
        inc["distinct_heap_pages_of_changed_rows"] = heap_pages_changed
        inc["distinct_heap_pages_vs_table"] = round(heap_pages_changed / heap_pages, 4)
        plan_lines = explain(url, previous)
        previous = inc.pop("record")
        inc.update(
            pattern=pattern,
            changed_keys=changed,
            share_of_full_time=round(inc["seconds"] / full["seconds"], 3),
            blocks_vs_table_pages=round(inc["blocks_touched"] / heap_pages, 4),
            blocks_vs_full=round(inc["blocks_touched"] / max(full["blocks_touched"], 1), 4),
            explain=plan_lines,
        )
        out["incremental"].append(inc)
        print(pattern, {k: v for k, v in inc.items() if k != "explain"}, flush=True)
        print("\n".join(plan_lines), flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM export_tombstones").fetchone()[0]
        pruned = prune_tombstones(conn, [previous.snapshot])
    out["tombstones"] = {"before": before, "pruned_after_last_delivery": pruned}
    print("tombstones:", out["tombstones"])
    out["load_after"] = os.getloadavg()
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"feeds-{args.rows}.json").write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
