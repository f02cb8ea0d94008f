"""`export-pipelines serve | api-key create|list|revoke`: the tenant HTTP API and its keys
(docs/api.md)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from export_pipelines.cli.common import settings_or_exit, source_url_or_exit
from export_pipelines.core.errors import ExportError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The API's /metrics listens apart from the tenants' port, on loopback unless told otherwise.
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9464
WORKER_HEALTHCHECK_SECONDS = 60


def key_store() -> Any:
    """The API key store on the source database, its tables migrated once."""
    from export_pipelines.core.requests.api_keys import ApiKeyStore

    return ApiKeyStore(source_url_or_exit()).migrate_once()


def cmd_serve(args: argparse.Namespace) -> int:
    metrics_dir = None
    if args.metrics_port and args.workers > 1:
        # Before any worker starts: each worker process finds the directory in its environment and
        # writes its samples there (prometheus-client's multiprocess mode); this process adds them up.
        metrics_dir = tempfile.mkdtemp(prefix="export-api-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return serve_api(args, metrics_dir)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def serve_api(args: argparse.Namespace, metrics_dir: str | None) -> int:
    import uvicorn

    from export_pipelines.api.app import create_app
    from export_pipelines.api.auth import configure_request_log
    from export_pipelines.api.metrics import serve_metrics
    from export_pipelines.api.server import run_workers, uvicorn_options

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    configure_request_log()
    settings = settings_or_exit()
    try:
        settings.require_source_database_url()
        settings.require_bucket()
        key_store().close()  # the tables exist (migrate once), as the sensor's first tick ensures
        # With several workers this also refuses to start without EXPORT_API_TOKEN_SECRET.
        app = create_app(settings, workers=args.workers)
    except ExportError as exc:
        print(f"export-pipelines serve: {exc}", file=sys.stderr)
        return 2
    metrics = None
    if args.metrics_port:
        try:
            metrics = serve_metrics(args.metrics_host, args.metrics_port, metrics_dir)
        except OSError as exc:
            print(
                f"export-pipelines serve: cannot listen on {args.metrics_host}:{args.metrics_port} for "
                f"/metrics ({exc.strerror}); choose another --metrics-port (0: no metrics)",
                file=sys.stderr,
            )
            return 2
    base = f"http://{args.host}:{args.port}"
    print(f"export API on {base}  (docs: {base}/docs; the exports page: {base}/exports)", flush=True)
    if metrics is not None:
        print(f"metrics on http://{args.metrics_host}:{metrics.server_port}/metrics", flush=True)
    common = {
        "host": args.host,
        "port": args.port,
        "access_log": False,  # the app logs each request itself, with the key and tenant
        "log_level": args.log_level,
        "timeout_graceful_shutdown": 5,
        # h11 with a header size limit (431), never the default parser (docs/security.md).
        **uvicorn_options(settings.api_max_header_bytes),
    }
    try:
        if args.workers > 1:
            # Each worker process builds its own app (and pool) from the environment.
            # A worker that has not answered uvicorn's health check within its timeout is killed and
            # started again; on a busy host a fresh worker's start (spawn, imports) takes longer than
            # uvicorn's 5 s default, and the workers would be restarted in a loop.
            # Each worker listens on a socket of its own, so connections spread over the workers.
            try:
                run_workers(
                    uvicorn.Config(
                        "export_pipelines.api.app:app_from_env",
                        factory=True,
                        workers=args.workers,
                        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
                        **common,
                    )
                )
            except OSError as exc:
                print(
                    f"export-pipelines serve: cannot listen on {args.host}:{args.port} ({exc.strerror}); "
                    "choose another --port",
                    file=sys.stderr,
                )
                return 2
        else:
            uvicorn.run(app, **common)
    finally:
        if metrics is not None:
            metrics.shutdown()
    return 0


def cmd_key_create(args: argparse.Namespace) -> int:
    if not args.tenant and not args.operator:
        print("export-pipelines api-key create: --tenant T (or --operator)", file=sys.stderr)
        return 2
    if args.tenant and not args.operator:
        # A key for a tenant the tenants table does not list would fail every export it asks for.
        from export_pipelines.core.requests.catalog import load_catalog
        from export_pipelines.core.requests.tenants import require_tenant

        try:
            require_tenant(source_url_or_exit(), load_catalog(settings_or_exit().catalog_path), args.tenant)
        except ExportError as exc:
            print(f"export-pipelines api-key create: {exc}", file=sys.stderr)
            return 2
    with key_store() as store:
        try:
            token, key = store.create(args.tenant, args.name or "", operator=args.operator)
        except ExportError as exc:
            print(f"export-pipelines api-key create: {exc}", file=sys.stderr)
            return 2
    who = "operator (any tenant)" if key.is_operator else f"tenant {key.tenant_id}"
    print(token)
    print(f"key {key.id} ({key.key_prefix}…) for {who}; shown once, stored hashed", file=sys.stderr)
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    with key_store() as store:
        keys = store.list(args.tenant, include_revoked=args.all)
    print(f"{'id':>5}  {'prefix':<14} {'tenant':<20} {'name':<20} {'created':<17} {'last used':<17} state")
    for k in keys:
        state = "revoked" if k.revoked_at else ("operator" if k.is_operator else "active")
        used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "-"
        print(
            f"{k.id:>5}  {k.key_prefix:<14} {k.tenant_id or '*':<20} {k.name[:20]:<20} "
            f"{k.created_at:%Y-%m-%d %H:%M} {used:<17} {state}"
        )
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    with key_store() as store:
        n = store.revoke(args.key)
    if not n:
        print(f"no active key {args.key!r} (give its id or prefix from `api-key list`)", file=sys.stderr)
        return 1
    print(f"revoked {n} key(s)")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the export HTTP API (uvicorn)")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes (one Python process uses one core)"
    )
    p.add_argument(
        "--metrics-host",
        default=DEFAULT_METRICS_HOST,
        help="address of the /metrics listener (default: loopback only; tenants never reach it)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="port of the /metrics listener, apart from the API's (0: no metrics)",
    )
    p.set_defaults(func=cmd_serve)

    keys = sub.add_parser("api-key", help="create, list or revoke API keys of the export API")
    ksub = keys.add_subparsers(dest="key_command", required=True)
    p = ksub.add_parser("create", help="a new key (printed once)")
    p.add_argument("--tenant", help="the tenant the key acts for")
    p.add_argument("--name", help="a label, e.g. the app using it")
    p.add_argument("--operator", action="store_true", help="the data team's key: may act for any tenant")
    p.set_defaults(func=cmd_key_create)
    p = ksub.add_parser("list", help="keys (prefix, tenant, name, last use)")
    p.add_argument("--tenant")
    p.add_argument("--all", action="store_true", help="revoked keys too")
    p.set_defaults(func=cmd_key_list)
    p = ksub.add_parser("revoke", help="revoke a key by id or prefix")
    p.add_argument("key")
    p.set_defaults(func=cmd_key_revoke)
