"""`export-pipelines track | feeds ...`: change tracking on a table, and tenants' feeds (docs/feeds.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from export_pipelines.cli.common import settings_or_exit, source_url_or_exit
from export_pipelines.core.errors import ExportError


def cmd_track(args: argparse.Namespace) -> int:
    from export_pipelines.core.engine.change_tracking import install
    from export_pipelines.core.requests.catalog import load_catalog

    settings = settings_or_exit()
    try:
        spec = load_catalog(settings.catalog_path).resource(args.resource)
        done = install(
            source_url_or_exit(),
            spec,
            backfill=args.backfill,
            batch_rows=args.batch_rows,
            on_batch=(lambda n: print(f"backfilled {n:,} rows", file=sys.stderr))
            if args.verbose_batches
            else None,
        )
    except ExportError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "resource": done.resource,
                "table": done.table,
                "backfilled_rows": done.backfilled_rows,
                "seconds": round(done.seconds, 2),
            }
        )
    )
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "track",
        help="install change tracking on a resource's table online (column, triggers, index "
        "CONCURRENTLY; --backfill fills existing rows in batches)",
    )
    p.add_argument("resource")
    p.add_argument("--backfill", action="store_true", help="fill the column of existing rows, in batches")
    p.add_argument("--batch-rows", type=int, default=10_000, help="rows per backfill transaction")
    p.add_argument("--verbose-batches", action="store_true", help="print the backfill's progress")
    p.set_defaults(func=cmd_track)
