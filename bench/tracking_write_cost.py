"""The write cost of change tracking, measured with pgbench on a write-only mix.

    .venv/bin/python bench/tracking_write_cost.py --seconds 30 --rounds 3

A table shaped like the demo orders (tenant_id, id, 8 more columns, primary key (tenant_id, id)),
200,000 rows, in database `exports_pgbench`. The mix, per transaction, weighted: 70 % an UPDATE of one
random row, 20 % an INSERT of a new row, 10 % a DELETE of one random row. Rounds alternate tracking
off (no triggers) and on (`install`: the xid column's trigger, the tombstone triggers, the (tenant,
xid) index), so drift on a shared machine hits both alike; TPS per round and the median of each are
printed and written to bench/results/tracking-write-cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from export_pipelines.core.engine.change_tracking import install, uninstall
from export_pipelines.core.requests.catalog import parse_catalog

ROWS = 200_000
CATALOG = parse_catalog(
    {
        "resources": {
            "pgb": {
                "table": "public.pgb_orders",
                "tenant_column": "tenant_id",
                "key": "id",
                "columns": ["id", "tenant_id", "amount", "note"],
                "change_tracking": True,
                "primary_key": ["tenant_id", "id"],
            }
        }
    },
    "bench",
)
SCRIPTS = {
    "update.sql": "\\set id random(1, {rows})\n"
    "UPDATE pgb_orders SET amount = amount + 1, note = 'u' "
    "WHERE tenant_id = 't-' || (:id % 20) AND id = :id;\n",
    "insert.sql": "\\set id random({rows} + 1, 1000000000)\n"
    "INSERT INTO pgb_orders "
    "(tenant_id, id, created_at, status, amount, currency, customer_email, note, attrs) "
    "VALUES ('t-' || (:id % 20), :id, now(), 'paid', 1, 'EUR', 'a@example.com', 'n', '{{}}') "
    "ON CONFLICT DO NOTHING;\n",
    "delete.sql": "\\set id random(1, {rows})\n"
    "DELETE FROM pgb_orders WHERE tenant_id = 't-' || (:id % 20) AND id = :id;\n",
}


def setup(admin: str, url: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'exports_pgbench'").fetchone():
            conn.execute("CREATE DATABASE exports_pgbench")
    with psycopg.connect(url, autocommit=True) as conn:
        from export_pipelines.core.storage.migrations import migrate

        conn.execute("DROP TABLE IF EXISTS pgb_orders")
        conn.execute(
            "CREATE TABLE pgb_orders (tenant_id text NOT NULL, id bigint NOT NULL, created_at timestamptz, "
            "status text, amount numeric(12,2), currency text, customer_email text, note text, attrs jsonb, "
            "PRIMARY KEY (tenant_id, id))"
        )
        conn.execute(
            "INSERT INTO pgb_orders SELECT 't-' || (g %% 20), g, now(), 'paid', g, 'EUR', 'a@example.com', "
            "'n', '{}' FROM generate_series(1, %s) g",
            [ROWS],
        )
        conn.execute("VACUUM ANALYZE pgb_orders")
    migrate(url)


def pgbench(url: str, seconds: int, clients: int, folder: Path) -> float:
    exe = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    args = [exe, "-n", "-T", str(seconds), "-c", str(clients), "-j", str(min(clients, 2))]
    for name, weight in (("update.sql", 7), ("insert.sql", 2), ("delete.sql", 1)):
        args += ["-f", f"{folder / name}@{weight}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    match = re.search(r"tps = ([0-9.]+)", out)
    assert match, out
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    base = os.environ["SOURCE_DATABASE_URL"].rsplit("/", 1)[0]
    url = base + "/exports_pgbench"
    setup(base + "/postgres", url)
    spec = CATALOG.resource("pgb")
    results: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, text in SCRIPTS.items():
            (folder / name).write_text(text.format(rows=ROWS))
        for r in range(args.rounds):
            for state in ("off", "on"):
                if state == "on":
                    install(url, spec)
                else:
                    uninstall(url, spec)
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("CHECKPOINT")
                tps = pgbench(url, args.seconds, args.clients, folder)
                results[state].append(tps)
                print(
                    f"round {r + 1} tracking {state}: {tps:,.0f} TPS (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    summary = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": args.seconds,
        "clients": args.clients,
        "tps": results,
        "median_off": off,
        "median_on": on,
        "change_percent": round(100 * (on - off) / off, 1),
        "load_after": os.getloadavg(),
    }
    print(json.dumps(summary, indent=2))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "tracking-write-cost.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
