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
    if args.off:
        from export_pipelines.core.engine.change_tracking import uninstall

        try:
            spec = load_catalog(settings.catalog_path).resource(args.resource)
            uninstall(source_url_or_exit(), spec, drop_column=args.drop_column)
        except ExportError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(
            f"change tracking of {spec.table} is off"
            + (" (column and index dropped)" if args.drop_column else "")
        )
        return 0
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


def _feed_store() -> Any:
    from export_pipelines.core.requests.feed_store import FeedStore

    return FeedStore(source_url_or_exit()).migrate_once()


def cmd_feeds_create(args: argparse.Namespace) -> int:
    from export_pipelines.core.requests.catalog import load_catalog
    from export_pipelines.core.requests.feed_store import check_feed

    settings = settings_or_exit()
    fields = {
        "tenant_id": args.tenant,
        "resource": args.resource,
        "format": args.format,
        "compression": args.compression,
        "columns": args.columns.split(",") if args.columns else None,
        "frequency": args.frequency,
        "mode": args.mode,
        "webhook_url": args.webhook_url,
        "email": args.email,
        "destination_id": args.destination,
    }
    try:
        checked = check_feed(load_catalog(settings.catalog_path), settings.webhook_allowlist, fields)
        with _feed_store() as store:
            made = store.create(checked)  # refuses a destination that is not the tenant's
    except ExportError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps(made.document(), indent=2))
    return 0


def cmd_feeds_list(args: argparse.Namespace) -> int:
    with _feed_store() as store:
        print(json.dumps([f.document() for f in store.list(args.tenant)], indent=2))
    return 0


def cmd_feeds_show(args: argparse.Namespace) -> int:
    with _feed_store() as store:
        feed = store.get(args.tenant, args.id)
    if feed is None:
        print(f"no feed {args.id} of tenant {args.tenant}", file=sys.stderr)
        return 1
    print(json.dumps(feed.document(), indent=2))
    return 0


def cmd_feeds_update(args: argparse.Namespace) -> int:
    from export_pipelines.core.requests.catalog import load_catalog
    from export_pipelines.core.requests.feed_store import FIELDS, check_feed

    settings = settings_or_exit()
    changes = {k: v for k, v in (("frequency", args.frequency), ("mode", args.mode)) if v is not None}
    if args.destination is not None:  # "" (or "link"): back to our bucket and links
        changes["destination_id"] = args.destination if args.destination not in ("", "link") else None
    with _feed_store() as store:
        feed = store.get(args.tenant, args.id)
        if feed is None:
            print(f"no feed {args.id} of tenant {args.tenant}", file=sys.stderr)
            return 1
        merged = {k: v for k, v in feed.document().items() if k in FIELDS}
        merged.update(
            {"webhook_url": feed.webhook_url, "email": feed.email, "tenant_id": feed.tenant_id, **changes}
        )
        try:
            check_feed(load_catalog(settings.catalog_path), settings.webhook_allowlist, merged)
            updated = store.update(args.tenant, args.id, changes)
        except ExportError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    print(json.dumps(updated.document() if updated else None, indent=2))
    return 0


def cmd_feeds_delete(args: argparse.Namespace) -> int:
    with _feed_store() as store:
        if not store.delete(args.tenant, args.id):
            print(f"no feed {args.id} of tenant {args.tenant}", file=sys.stderr)
            return 1
    print(f"feed {args.id} deleted")
    return 0


def cmd_feeds_run(args: argparse.Namespace) -> int:
    from export_pipelines.core.requests.feed_store import start_delivery

    with _feed_store() as store:
        feed = store.get(args.tenant, args.id)
        if feed is None:
            print(f"no feed {args.id} of tenant {args.tenant}", file=sys.stderr)
            return 1
        try:
            row = start_delivery(store.conn, feed, full_refresh=args.full_refresh)
        except ExportError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    print(
        json.dumps(
            {"export_id": row.id, "feed_id": row.feed_id, "sequence": row.sequence, "status": row.status}
        )
    )
    return 0


def add_commands(sub: Any) -> None:
    feeds = sub.add_parser(
        "feeds", help="tenants' feeds: standing exports delivering what changed (docs/feeds.md)"
    )
    verbs = feeds.add_subparsers(dest="feeds_command", required=True)
    p = verbs.add_parser("create", help="create a feed; prints it")
    p.add_argument("--tenant", required=True)
    p.add_argument("--resource", required=True)
    p.add_argument("--frequency", required=True, help="hourly | daily | weekly | monthly | manual (UTC)")
    p.add_argument("--mode", default="incremental", help="incremental (first delivery full) | full")
    p.add_argument("--format", default="csv")
    p.add_argument("--compression")
    p.add_argument("--columns", help="comma-separated; must include the primary key")
    p.add_argument("--webhook-url")
    p.add_argument("--email")
    p.add_argument("--destination", help="a destination id of the tenant (destinations list); default: links")
    p.set_defaults(func=cmd_feeds_create)
    p = verbs.add_parser("list", help="a tenant's feeds")
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_feeds_list)
    for name, func, text in (
        ("show", cmd_feeds_show, "one feed"),
        ("delete", cmd_feeds_delete, "delete a feed (its deliveries stay exports)"),
    ):
        p = verbs.add_parser(name, help=text)
        p.add_argument("id")
        p.add_argument("--tenant", required=True)
        p.set_defaults(func=func)
    p = verbs.add_parser("update", help="change a feed's frequency, mode or destination")
    p.add_argument("id")
    p.add_argument("--tenant", required=True)
    p.add_argument("--frequency")
    p.add_argument("--mode")
    p.add_argument(
        "--destination",
        help="a destination id of the tenant, or '' for links; the next delivery is then full",
    )
    p.set_defaults(func=cmd_feeds_update)
    p = verbs.add_parser("run", help="make the feed's next delivery now (an export row); prints its id")
    p.add_argument("id")
    p.add_argument("--tenant", required=True)
    p.add_argument("--full-refresh", action="store_true", help="the delivery is full (replace everything)")
    p.set_defaults(func=cmd_feeds_run)

    p = sub.add_parser(
        "track",
        help="install change tracking on a resource's table online (column, triggers, index "
        "CONCURRENTLY; --backfill fills existing rows in batches)",
    )
    p.add_argument("resource")
    p.add_argument("--backfill", action="store_true", help="fill the column of existing rows, in batches")
    p.add_argument("--batch-rows", type=int, default=10_000, help="rows per backfill transaction")
    p.add_argument("--verbose-batches", action="store_true", help="print the backfill's progress")
    p.add_argument(
        "--off",
        action="store_true",
        help="turn tracking off: drop the triggers and the resource's tombstones",
    )
    p.add_argument(
        "--drop-column", action="store_true", help="with --off: also drop the index and the column"
    )
    p.set_defaults(func=cmd_track)
