"""`export-pipelines failed-partitions | backfill`: the data team's monthly path (docs/data-team.md).
Refuses bad input naming the flag, and never launches a backfill of nothing (Dagster reads an
empty partition list as every partition)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from export_pipelines.cli.common import settings_or_exit, source_url_or_exit
from export_pipelines.core.errors import ExportError


def cmd_failed_partitions(args: argparse.Namespace) -> int:
    """Comma-separated keys of the partitions whose latest run failed (`backfill --failed` launches them)."""
    import dagster as dg

    from export_pipelines.orchestration.monthly.backfills import check_job, failed_partitions, parse_month

    try:
        job = check_job(args.job)
        month = parse_month(args.month) if args.month is not None else None
    except ExportError as exc:
        print(f"export-pipelines failed-partitions: {exc}", file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        keys = failed_partitions(instance, job, month)
    if keys:
        print(",".join(keys))
    else:  # said on stderr: stdout stays the (empty) list a script reads
        print(f"no failed partitions of {job}{f' in {month[:7]}' if month else ''}", file=sys.stderr)
    return 0


def backfill_keys(args: argparse.Namespace, instance: Any, month: str) -> list[str]:
    """The partition keys `backfill` launches: the month's failed ones (--failed), or the month for
    each --tenant, or for every enterprise tenant (as the monthly schedule does)."""
    from datetime import UTC, datetime

    from export_pipelines.core.errors import InvalidRequest
    from export_pipelines.core.requests.catalog import load_catalog
    from export_pipelines.core.requests.tenants import list_tenants
    from export_pipelines.orchestration.monthly.backfills import check_month_in_range, failed_partitions
    from export_pipelines.orchestration.monthly.partitions import (
        TENANT_PARTITIONS_NAME,
        monthly_key,
        partitionable,
    )

    settings = settings_or_exit()
    check_month_in_range(month, settings.months_from, datetime.now(UTC).strftime("%Y-%m-%d"))
    if args.failed:
        if args.tenant:
            raise InvalidRequest("--tenant", "cannot be combined with --failed (it re-runs every failed one)")
        return failed_partitions(instance, args.job, month)
    catalog = load_catalog(settings.catalog_path)
    known = list_tenants(source_url_or_exit(), catalog)
    if args.tenant:
        tenants = list(dict.fromkeys(args.tenant))
        if unknown := [t for t in tenants if t not in known]:
            raise InvalidRequest(
                "--tenant", f"must name tenants of the tenants table; unknown: {', '.join(unknown)}"
            )
    else:
        tenants = list_tenants(source_url_or_exit(), catalog, enterprise_only=True)
    # ',' separates keys on Dagster's backfill command line, '|' the dimensions of a key.
    if bad := [t for t in tenants if not partitionable(t) or "," in t]:
        raise InvalidRequest("--tenant", f"ids with '|' or ',' cannot be partitions: {', '.join(bad)}")
    have = set(instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    if missing := [t for t in tenants if t not in have]:
        instance.add_dynamic_partitions(TENANT_PARTITIONS_NAME, missing)
    return [str(monthly_key(t, month)) for t in tenants]


def cmd_backfill(args: argparse.Namespace) -> int:
    """ONE Dagster backfill of a month: every enterprise tenant, the --tenant list, or (--failed)
    the partitions whose latest run failed. Nothing to run → says so, launches nothing, exits 0."""
    import dagster as dg

    from export_pipelines.orchestration.monthly.backfills import check_job, launch_backfill, parse_month

    try:
        check_job(args.job)
        month = parse_month(args.month)
    except ExportError as exc:
        print(f"export-pipelines backfill: {exc}", file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        try:
            keys = backfill_keys(args, instance, month)
        except ExportError as exc:
            print(f"export-pipelines backfill: {exc}", file=sys.stderr)
            return 2
        if not keys:
            what = "nothing failed" if args.failed else "no enterprise tenants"
            print(f"{what} in {month[:7]}: no backfill launched")
            return 0
        listed = f"{len(keys)} partition(s) of {args.job}: {', '.join(keys)}"
        if args.dry_run:
            print(f"dry run, nothing launched; a backfill would cover {listed}")
            return 0
        print(f"backfill of {listed}")
        launch_backfill(instance, keys, job_name=args.job, ui_url=settings_or_exit().dagster_ui_url)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("failed-partitions", help="partitions whose latest run failed (for a backfill)")
    p.add_argument("--job", default="monthly_tenant_export_job", help="monthly_tenant_export_job")
    p.add_argument("--month", help="only this month, YYYY-MM (e.g. 2026-11)")
    p.set_defaults(func=cmd_failed_partitions)

    p = sub.add_parser(
        "backfill",
        help="ONE Dagster backfill of a month: every enterprise tenant, --tenant ones, or --failed ones",
    )
    p.add_argument("--month", required=True, help="YYYY-MM, e.g. 2026-10")
    p.add_argument("--tenant", action="append", help="only this tenant (repeat for several)")
    p.add_argument("--failed", action="store_true", help="only partitions whose latest run failed")
    p.add_argument("--job", default="monthly_tenant_export_job", help="monthly_tenant_export_job")
    p.add_argument("--dry-run", action="store_true", help="print the partitions, launch nothing")
    p.set_defaults(func=cmd_backfill)
