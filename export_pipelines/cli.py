"""`export-pipelines`: the command line for people and scripts (demo data, demo run, requests)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import psycopg

from export_pipelines.core.demo_data import DemoSize, load_demo_data


def _source_url() -> str:
    url = os.environ.get("SOURCE_DATABASE_URL")
    if not url:
        sys.exit("SOURCE_DATABASE_URL is not set (run `source scripts/env.sh` first)")
    return url


def cmd_demo_data(args: argparse.Namespace) -> int:
    size = DemoSize(big_rows=args.big_rows, small_rows=args.small_rows, small_tenants=args.small_tenants)
    with psycopg.connect(_source_url(), autocommit=True) as conn:
        if not args.force:
            row = conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()
            if row and row[0]:
                have = conn.execute("SELECT count(*) FROM public.orders").fetchone()
                if have and have[0] == size.total:
                    print(f"demo data present: {have[0]} orders rows (use --force to regenerate)")
                    return 0
        rows = load_demo_data(conn, size)
    print(f"demo data loaded: {rows} orders rows, big tenant t-big, {size.small_tenants} small tenants")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run tenant_export_job on the configured Dagster instance and print what it made."""
    import dagster as dg

    from export_pipelines.definitions import tenant_export_job_with_resources

    run_config = {
        "ops": {
            "count_rows": {
                "config": {"tenant_id": args.tenant, "resource": args.resource, "format": args.format}
            }
        }
    }
    with (
        dg.DagsterInstance.get() as instance,
        dg.execute_job(
            dg.reconstructable(tenant_export_job_with_resources),
            instance=instance,
            run_config=run_config,
            tags={"tenant": args.tenant},
        ) as result,
    ):
        if not result.success:
            print(f"run {result.run_id} failed; see `dagster dev` UI or the log above", file=sys.stderr)
            return 1
        done = result.output_for_node("finalize")
    print(f"run {result.run_id} succeeded: {done.rows} rows, {done.bytes} bytes in {len(done.files)} file(s)")
    for link in done.files:
        print(f"  s3 object: {link.key}  ({link.rows} rows, {link.bytes} bytes)")
    print(f"  manifest:  {done.manifest_key}")
    print(f"  link (expires {done.expires_at:%Y-%m-%d %H:%M} UTC):")
    print(f"  {done.files[0].url}")
    print(f"download it: curl -fSs -o export.{done.files[0].key.split('.', 1)[1]} '{done.files[0].url}'")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export-pipelines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="create the demo tenants/orders tables and rows (idempotent)")
    p.add_argument("--big-rows", type=int, default=DemoSize().big_rows, help="rows of the big tenant t-big")
    p.add_argument(
        "--small-rows", type=int, default=DemoSize().small_rows, help="rows shared by small tenants"
    )
    p.add_argument("--small-tenants", type=int, default=DemoSize().small_tenants)
    p.add_argument("--force", action="store_true", help="regenerate even if the row count matches")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("demo", help="run tenant_export_job for one tenant and print keys, rows, link")
    p.add_argument("--tenant", default="t-big")
    p.add_argument("--resource", default="orders")
    p.add_argument("--format", default="csv")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
