"""`export-pipelines metrics`: the Dagster side's Prometheus exporter — /metrics computed from the
request, delivery and refusal tables and the Dagster instance (docs/operations.md#monitoring)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from export_pipelines.cli.common import settings_or_exit, source_url_or_exit

DEFAULT_HOST = "127.0.0.1"  # operators' data: reachable from this host only unless told otherwise
DEFAULT_PORT = 9465


def cmd_metrics(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance
    from dagster._core.errors import DagsterHomeNotSetError, DagsterInvariantViolationError
    from prometheus_client import CollectorRegistry, start_http_server

    from export_pipelines.core.requests.catalog import load_catalog
    from export_pipelines.core.storage.migrations import migrate_once
    from export_pipelines.orchestration.metrics import ServiceCollector

    settings = settings_or_exit()
    conninfo = source_url_or_exit()
    migrate_once(conninfo)  # the counters' tables exist before the first scrape
    instance = None
    if not args.no_dagster:
        try:
            instance = DagsterInstance.get()
        except (DagsterHomeNotSetError, DagsterInvariantViolationError) as exc:
            print(f"export-pipelines metrics: {exc} (or pass --no-dagster)", file=sys.stderr)
            return 2
    collector = ServiceCollector(
        conninfo, load_catalog(settings.catalog_path), instance, min_interval_seconds=args.min_interval
    )
    registry = CollectorRegistry()
    registry.register(collector)
    server, _thread = start_http_server(args.port, addr=args.host, registry=registry)
    print(f"metrics on http://{args.host}:{server.server_port}/metrics", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    collector.close()
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "metrics",
        help="serve Prometheus /metrics of requests, queue, runs, deliveries and refusals (beside "
        "dagster-daemon, same DAGSTER_HOME and settings)",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument(
        "--min-interval",
        type=float,
        default=5.0,
        help="seconds a computed scrape is reused, so several scrapers cost one computation",
    )
    p.add_argument("--no-dagster", action="store_true", help="the tables' metrics only, no Dagster instance")
    p.set_defaults(func=cmd_metrics)
