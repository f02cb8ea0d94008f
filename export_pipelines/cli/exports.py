"""`export-pipelines migrate | request | status | relink`: the request table's commands for people
and scripts (docs/requests.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from export_pipelines.cli.common import (
    FORMAT_HELP,
    request_store,
    s3_client,
    settings_or_exit,
    source_url_or_exit,
)
from export_pipelines.core.errors import ConfigurationError, ExportError


def cmd_migrate(args: argparse.Namespace) -> int:
    from export_pipelines.core.engine.change_tracking import install_all
    from export_pipelines.core.requests.catalog import load_catalog
    from export_pipelines.core.storage.migrations import migrate

    settings = settings_or_exit()
    tenants = load_catalog(settings.catalog_path).tenants
    # The catalog's tenants table: request rows for tenants it does not list are refused at insert.
    source = (tenants.table.schema, tenants.table.name, tenants.key) if tenants is not None else None
    url = source_url_or_exit()
    migrate(url, tenant_max_active=settings.tenant_max_active, tenant_source=source)
    print("export_requests, export_deliveries and the checkpoint tables are up to date")
    try:
        installed, missing = install_all(url, load_catalog(settings.catalog_path))
    except ExportError as exc:
        print(f"change tracking: {exc}", file=sys.stderr)
        return 1
    for done in installed:
        print(f"change tracking on {done.table} (resource {done.resource}) is up to date")
    for spec in missing:
        print(
            f"change tracking on {spec.table.schema}.{spec.table.name} (resource {spec.name}): the table "
            "does not exist yet; run `export-pipelines migrate` again once it does"
        )
    return 0


def filter_arg(text: str) -> tuple[str, str]:
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
    from export_pipelines.core.requests.catalog import load_catalog
    from export_pipelines.core.requests.request_row import check_request_fields
    from export_pipelines.core.requests.tenants import require_tenant

    settings = settings_or_exit()
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
        check_request_fields(
            catalog, settings.webhook_allowlist, **fields, allow_private=settings.webhook_allow_private
        )
        require_tenant(source_url_or_exit(), catalog, args.tenant)
        if args.format == "pdf":  # over its row cap: refused now when the count is cheap (plan.py)
            check_pdf_request(catalog, fields, settings.pdf_max_rows)
        with request_store() as store:
            # The database answers the per-tenant cap and the size limits; the key the store's one
            # idempotency rule (the API's): the same request again prints the first one's id.
            request_id = store.create(**fields, idempotency_key=args.idempotency_key)
    except ExportError as exc:
        print(f"export-pipelines request: {exc}", file=sys.stderr)
        return 2
    print(request_id)
    return 0


def check_pdf_request(catalog: Any, fields: dict[str, Any], cap: int) -> None:
    """The API's request-time PDF check, for this door too."""
    from export_pipelines.core.engine.plan import check_pdf_rows, pdf_rows_at_most
    from export_pipelines.core.requests.request import build_request
    from export_pipelines.core.storage.pg_connect import open_connection

    request = build_request(
        catalog,
        tenant_id=fields["tenant_id"],
        resource=fields["resource"],
        format="pdf",
        compression=fields["compression"],
        columns=fields["columns"],
        filters=fields["filters"],
    )
    with open_connection(source_url_or_exit(), autocommit=True) as conn:
        rows = pdf_rows_at_most(conn, catalog, request, cap)
    if rows is not None:
        check_pdf_rows(rows, cap, exact=False)


def cmd_status(args: argparse.Namespace) -> int:
    with request_store() as store:
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


def cmd_cancel(args: argparse.Namespace) -> int:
    """The operator's cancel: the same store method as the API's (the row is canceled at once; the
    cancel sensor stops its run and empties its folder)."""
    with request_store() as store:
        row = store.cancel(args.id, None)
    if row is None:
        print(f"no export request {args.id!r}", file=sys.stderr)
        return 1
    if row.status != "canceled":
        print(
            f"the export is {row.status}; only pending, queued or running exports can be canceled",
            file=sys.stderr,
        )
        return 1
    print(f"canceled: {row.id} ({row.error})")
    return 0


def cmd_relink(args: argparse.Namespace) -> int:
    """Fresh presigned links for a succeeded export that has not expired.

    The keys come from the export's own folder (prefix, tenant, resource, request id) and the
    manifest read there, never from the row's `manifest_key` (apps can write rows)."""
    from datetime import UTC, datetime

    from export_pipelines.core.requests.request import MAX_LINK_EXPIRY_HOURS
    from export_pipelines.core.storage.links import download_link, fresh_links

    settings = settings_or_exit()
    if not 1 <= args.hours <= MAX_LINK_EXPIRY_HOURS:
        print(f"--hours: must be from 1 to {MAX_LINK_EXPIRY_HOURS}", file=sys.stderr)
        return 2
    with request_store() as store:
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
            links = fresh_links(client, bucket, row.location(settings.prefix), args.hours)
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


def add_commands(sub: Any) -> None:
    p = sub.add_parser("migrate", help="create/upgrade export_requests and the checkpoint tables")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("request", help="queue an export (a row in export_requests); prints its id")
    p.add_argument("--tenant", required=True)
    p.add_argument("--resource", required=True)
    p.add_argument("--format", default="csv", help=FORMAT_HELP)
    p.add_argument("--compression", help="per format (docs/formats.md); default: the format's own")
    p.add_argument("--columns", help="comma-separated column names (default: all)")
    p.add_argument(
        "--filter",
        action="append",
        type=filter_arg,
        metavar="NAME=VALUE",
        help="catalog filter; repeat a name for IN (...)",
    )
    p.add_argument("--date-from", help="inclusive, ISO 8601")
    p.add_argument("--date-to", help="exclusive, ISO 8601")
    p.add_argument("--webhook-url")
    p.add_argument("--email")
    p.add_argument(
        "--idempotency-key",
        help="the same key with the same request prints the first request's id; with another request "
        "it is refused (as the API's Idempotency-Key)",
    )
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("status", help="status, progress and link of a request")
    p.add_argument("id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel a pending, queued or running export (as the API's cancel)")
    p.add_argument("id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("relink", help="issue a fresh download link for an unexpired export")
    p.add_argument("id")
    p.add_argument("--hours", type=int, default=24)
    p.set_defaults(func=cmd_relink)
