"""`python -m export_pipelines_dev demo-data | stack start|stop|status|env|destroy`: the development
commands, kept out of the runtime's `export-pipelines` (docs/development.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from export_pipelines_dev.demo_data import DemoSize, load_demo_data
from export_pipelines_dev.local_stack import api as stack
from export_pipelines_dev.local_stack.paths import StackError, say

PROG = "python -m export_pipelines_dev"


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Create the demo tenants/orders tables and rows in SOURCE_DATABASE_URL (idempotent)."""
    from export_pipelines.core.errors import ConfigurationError
    from export_pipelines.core.storage.pg_connect import open_connection
    from export_pipelines.settings import Settings

    size = DemoSize(big_rows=args.big_rows, small_rows=args.small_rows, small_tenants=args.small_tenants)
    try:
        conn = open_connection(Settings.from_env().require_source_database_url(), autocommit=True)
    except ConfigurationError as exc:
        print(f"{PROG} demo-data: {exc}", file=sys.stderr)
        return 2
    with conn:
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


def cmd_stack(args: argparse.Namespace) -> int:
    """The local PostgreSQL + S3 (export_pipelines_dev/local_stack/)."""
    try:
        if args.action == "start":
            stack.start()
            say(f'env: eval "$({PROG} stack env)"')
        elif args.action == "stop":
            stack.stop()
        elif args.action == "status":
            for service in stack.status():
                say(service.line())
        elif args.action == "env":
            for key, value in stack.stack_env().items():
                print(f"export {key}={shlex.quote(value)}")
        else:
            stack.destroy()
    except StackError as exc:
        print(f"local_stack: error: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Development commands (not in the runtime wheel)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="create the demo tenants/orders tables and rows (idempotent)")
    p.add_argument("--big-rows", type=int, default=DemoSize().big_rows, help="rows of the big tenant t-big")
    p.add_argument(
        "--small-rows", type=int, default=DemoSize().small_rows, help="rows shared by small tenants"
    )
    p.add_argument("--small-tenants", type=int, default=DemoSize().small_tenants)
    p.add_argument("--force", action="store_true", help="regenerate even if the row count matches")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser(
        "stack",
        help="local PostgreSQL + S3 for development and tests (127.0.0.1 only, DEV ONLY auth)",
    )
    p.add_argument(
        "action",
        choices=["start", "stop", "status", "env", "destroy"],
        help="start: ensure running; env: print `export` lines for eval; destroy: stop and delete data",
    )
    p.set_defaults(func=cmd_stack)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
