"""`export-pipelines`: the command line for people and scripts (demo data, demo run, requests)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from export_pipelines.core.errors import ConfigurationError, ExportError
from export_pipelines.core.formats import format_names
from export_pipelines.core.request_store import RequestStore
from export_pipelines.settings import Settings
from export_pipelines_dev.demo_data import DemoSize, load_demo_data

FORMAT_HELP = f"one of: {', '.join(format_names())} (csv_excel: the CSV excel profile)"


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigurationError as exc:
        sys.exit(str(exc))


def _source_url() -> str:
    try:
        return _settings().require_source_database_url()
    except ConfigurationError as exc:
        sys.exit(str(exc))


def cmd_demo_data(args: argparse.Namespace) -> int:
    size = DemoSize(big_rows=args.big_rows, small_rows=args.small_rows, small_tenants=args.small_tenants)
    from export_pipelines.core.pg_connect import open_connection

    try:
        conn = open_connection(_source_url(), autocommit=True)
    except ConfigurationError as exc:
        print(f"export-pipelines demo-data: {exc}", file=sys.stderr)
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Run tenant_export_job on the configured Dagster instance and print what it made.

    With a daemon serving the instance's run queue, the run goes through that queue like every
    other door (the per-tenant and global caps of dagster.yaml apply, and the run coordinator tags
    it); without one (the README's first command) it runs in this process, where no queued run
    can start beside it."""
    import dagster as dg

    from export_pipelines.orchestration.run_config import export_run_config

    run_config = export_run_config(tenant_id=args.tenant, resource=args.resource, format=args.format)
    with dg.DagsterInstance.get() as instance:
        if _queue_is_served(instance):
            return _demo_through_the_queue(instance, run_config, args.timeout)
        return _demo_in_process(instance, run_config)


# A daemon whose queue heartbeat is older than this is taken as stopped.
DAEMON_HEARTBEAT_SECONDS = 60


def _queue_is_served(instance: Any) -> bool:
    import time

    from dagster._core.run_coordinator import QueuedRunCoordinator

    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return False
    beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return beat is not None and time.time() - beat.timestamp < DAEMON_HEARTBEAT_SECONDS


def _demo_through_the_queue(instance: Any, run_config: dict[str, Any], timeout: float) -> int:
    import json
    import time

    import dagster as dg
    from dagster._cli.job import execute_launch_command
    from dagster._cli.workspace.cli_target import WorkspaceOpts

    from export_pipelines.orchestration.backfills import WORKSPACE

    run = execute_launch_command(
        instance=instance,
        workspace_opts=WorkspaceOpts(workspace=[str(WORKSPACE)]),
        config_json=json.dumps(run_config),
        job_name="tenant_export_job",
    )
    print(f"run {run.run_id} queued (the daemon starts it when the tenant's and the global caps allow)")
    deadline = time.monotonic() + timeout
    while (run := instance.get_run_by_id(run.run_id)) is not None and not run.is_finished:
        if time.monotonic() > deadline:
            print(f"run {run.run_id} still {run.status.value} after {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.5)
    if run is None or run.status != dg.DagsterRunStatus.SUCCESS:
        print(f"run {run.run_id if run else '?'} failed; see the Dagster UI", file=sys.stderr)
        return 1
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    meta = records[-1].event_log_entry.asset_materialization.metadata
    url = meta["download"].value
    print(f"run {run.run_id} succeeded: {meta['rows'].value} rows, {meta['size'].value}")
    print(f"  folder:    {meta['folder'].value}")
    print(f"  link (expires {meta['expires_at'].value}):")
    print(f"  {url}")
    return 0


def _demo_in_process(instance: Any, run_config: dict[str, Any]) -> int:
    import dagster as dg

    from export_pipelines.core.layout import file_extension
    from export_pipelines.definitions import tenant_export_job_with_resources
    from export_pipelines.orchestration.run_coordinator import export_tags

    with dg.execute_job(
        dg.reconstructable(tenant_export_job_with_resources),
        instance=instance,
        run_config=run_config,
        tags=export_tags({}, run_config),  # as the run coordinator tags queued runs
    ) as result:
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
    print(f"download it: curl -fSs -o export.{file_extension(done.files[0].key)} '{done.files[0].url}'")
    return 0


def _store() -> RequestStore:
    try:
        return RequestStore(_source_url()).migrate_once()
    except ConfigurationError as exc:  # e.g. a malformed SOURCE_DATABASE_URL (never its password)
        sys.exit(f"export-pipelines: {exc}")


def cmd_migrate(args: argparse.Namespace) -> int:
    from export_pipelines.core.migrations import migrate

    migrate(_source_url(), tenant_max_active=_settings().tenant_max_active)
    print("export_requests, export_deliveries and the checkpoint tables are up to date")
    return 0


def _filter_arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--filter takes NAME=VALUE, got {text!r}")
    return name, value


def cmd_request(args: argparse.Namespace) -> int:
    filters: dict[str, object] = {}
    for name, value in args.filter or []:
        prev = filters.get(name)
        filters[name] = value if prev is None else [*(prev if isinstance(prev, list) else [prev]), value]
    if args.date_from:
        filters["date_from"] = args.date_from
    if args.date_to:
        filters["date_to"] = args.date_to
    columns = args.columns.split(",") if args.columns else None
    # Check before inserting: the caller hears what is wrong now (exit 2), instead of finding a
    # failed row later, or a driver traceback for text PostgreSQL cannot store (NUL, bad UTF-8).
    # The same check the request sensor makes before it launches a row (webhook allowlist included).
    from export_pipelines.core.catalog import load_catalog
    from export_pipelines.core.request_row import check_request_fields
    from export_pipelines.core.tenants import require_tenant

    settings = _settings()
    fields = {
        "tenant_id": args.tenant,
        "resource": args.resource,
        "format": args.format,
        "compression": args.compression,
        "columns": columns,
        "filters": filters,
        "webhook_url": args.webhook_url,
        "email": args.email,
    }
    try:
        catalog = load_catalog(settings.catalog_path)
        check_request_fields(catalog, settings.webhook_allowlist, **fields)
        require_tenant(_source_url(), catalog, args.tenant)
        with _store() as store:
            # The database answers the per-tenant cap and the size limits (InvalidRequest).
            request_id = store.create(**fields)
    except ExportError as exc:
        print(f"export-pipelines request: {exc}", file=sys.stderr)
        return 2
    print(request_id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _store() as store:
        row = store.get(args.id)
    if row is None:
        print(f"no export request {args.id!r}", file=sys.stderr)
        return 1
    progress = ""
    if row.rows_total:
        progress = f" ({100 * row.rows_exported / row.rows_total:.1f}%)"
    print(f"id:        {row.id} (attempt {row.attempt})")
    print(f"tenant:    {row.tenant_id}   resource: {row.resource}   format: {row.format}")
    print(f"status:    {row.status}")
    total = row.rows_total if row.rows_total is not None else "?"
    print(f"progress:  {row.rows_exported}/{total} rows{progress}, {row.bytes_written} bytes")
    if row.run_id:
        print(f"run:       {row.run_id}")
    if row.error:
        print(f"error:     {row.error}")
    if row.download_url:
        print(f"expires:   {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else "expires:   -")
        print(f"link:      {row.download_url}")
    return 0


def cmd_relink(args: argparse.Namespace) -> int:
    """Fresh presigned links for a succeeded export that has not expired.

    The keys come from the export's own folder (prefix, tenant, resource, request id) and the
    manifest read there, never from the row's `manifest_key` (apps can write rows)."""
    from datetime import UTC, datetime

    from export_pipelines.core.janitor import request_location
    from export_pipelines.core.links import download_link, fresh_links
    from export_pipelines.core.request import MAX_LINK_EXPIRY_HOURS

    settings = _settings()
    if not 1 <= args.hours <= MAX_LINK_EXPIRY_HOURS:
        print(f"--hours: must be from 1 to {MAX_LINK_EXPIRY_HOURS}", file=sys.stderr)
        return 2
    with _store() as store:
        row = store.get(args.id)
        if row is None or row.status != "succeeded":
            state = "unknown" if row is None else row.status
            print(
                f"export {args.id} cannot get a new link (status: {state}); only succeeded exports can",
                file=sys.stderr,
            )
            return 1
        if row.expires_at is None or row.expires_at <= datetime.now(UTC):
            print(
                f"export {args.id} cannot get a new link: it expired"
                f"{f' at {row.expires_at:%Y-%m-%d %H:%M} UTC' if row.expires_at else ''} and its files"
                " are deleted; request the export again",
                file=sys.stderr,
            )
            return 1
        try:
            client, bucket = s3_client(settings), settings.require_bucket()
            links = fresh_links(client, bucket, request_location(settings.prefix, row), args.hours)
        except ConfigurationError as exc:
            print(f"export-pipelines relink: {exc}", file=sys.stderr)
            return 2
        except ExportError as exc:  # Rejected: no complete export of its own in its folder
            print(f"export {args.id} cannot get a new link: {exc}", file=sys.stderr)
            return 1
        link = download_link(links)
        store.refresh_link(row.id, link.url, link.expires_at)
    print(link.url)
    return 0


def s3_client(settings: Settings) -> Any:
    from export_pipelines.core.s3 import make_s3_client

    return make_s3_client(**settings.s3_client_options())


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
    p.add_argument("--format", default="csv", help=FORMAT_HELP)
    p.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for a queued run (with a daemon)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("migrate", help="create/upgrade export_requests and the checkpoint tables")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("request", help="queue an export (a row in export_requests); prints its id")
    p.add_argument("--tenant", required=True)
    p.add_argument("--resource", required=True)
    p.add_argument("--format", default="csv", help=FORMAT_HELP)
    p.add_argument("--compression", help="per format (README: Formats); default: the format's own")
    p.add_argument("--columns", help="comma-separated column names (default: all)")
    p.add_argument(
        "--filter",
        action="append",
        type=_filter_arg,
        metavar="NAME=VALUE",
        help="catalog filter; repeat a name for IN (...)",
    )
    p.add_argument("--date-from", help="inclusive, ISO 8601")
    p.add_argument("--date-to", help="exclusive, ISO 8601")
    p.add_argument("--webhook-url")
    p.add_argument("--email")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("status", help="status, progress and link of a request")
    p.add_argument("id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("relink", help="issue a fresh download link for an unexpired export")
    p.add_argument("id")
    p.add_argument("--hours", type=int, default=24)
    p.set_defaults(func=cmd_relink)

    from export_pipelines.orchestration.backfill_commands import add_commands as add_backfill_commands

    add_backfill_commands(sub)  # failed-partitions, backfill
    __import__("export_pipelines.orchestration.submitter").orchestration.submitter.add_commands(sub)
    __import__("export_pipelines.tenant_settings_cli").tenant_settings_cli.add_commands(sub)  # tenant-notify
    from export_pipelines.api.cli import add_commands

    add_commands(sub)  # serve, api-key
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
