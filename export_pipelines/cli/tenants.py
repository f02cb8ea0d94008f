"""`export-pipelines tenant-notify`: show or set a tenant's default notify targets, used by its
monthly dumps and by its requests that name no targets of their own (docs/requests.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from export_pipelines.cli.common import settings_or_exit, source_url_or_exit
from export_pipelines.core.errors import ExportError, InvalidRequest


def cmd_tenant_notify(args: argparse.Namespace) -> int:
    """Show (no option), set (--webhook-url / --email; an option not given keeps its value, an empty
    one clears it) or --clear a tenant's default targets. Exits 2 naming the flag on bad input."""
    from export_pipelines.core.requests.catalog import load_catalog
    from export_pipelines.core.requests.tenant_settings import TenantSettingsStore
    from export_pipelines.core.requests.tenants import list_tenants

    settings = settings_or_exit()
    url = source_url_or_exit()
    try:
        if args.clear and (args.webhook_url is not None or args.email is not None):
            raise InvalidRequest("--clear", "cannot be combined with --webhook-url or --email")
        if args.tenant not in list_tenants(url, load_catalog(settings.catalog_path)):
            raise InvalidRequest("--tenant", f"{args.tenant!r} is not a tenant (not in the tenants table)")
        with TenantSettingsStore(url).migrate_once() as store:
            current = store.get(args.tenant)
            if args.clear:
                current = store.clear(args.tenant)
            elif args.webhook_url is not None or args.email is not None:
                current = store.set(
                    args.tenant,
                    webhook_url=current.webhook_url if args.webhook_url is None else args.webhook_url,
                    email=current.email if args.email is None else args.email,
                    allowlist=settings.webhook_allowlist,
                )
    except InvalidRequest as exc:
        name = exc.field or ""
        field = {"webhook_url": "--webhook-url", "email": "--email"}.get(name, name)
        print(
            f"export-pipelines tenant-notify: {field}: {str(exc).removeprefix(name + ': ')}", file=sys.stderr
        )
        return 2
    except ExportError as exc:
        print(f"export-pipelines tenant-notify: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(current.as_dict()))
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "tenant-notify",
        help="show or set a tenant's default notify targets (monthly dumps, requests without targets)",
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--webhook-url", default=None, help="http(s) URL; an empty value clears it")
    p.add_argument("--email", default=None, help="one address; an empty value clears it")
    p.add_argument("--clear", action="store_true", help="remove both targets")
    p.set_defaults(func=cmd_tenant_notify)
