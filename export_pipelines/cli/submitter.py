"""`export-pipelines submitter`: start export requests' runs as their rows are inserted
(LISTEN/NOTIFY), beside dagster-daemon (docs/operations.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from export_pipelines.cli.common import code_server_log_level, settings_or_exit, source_url_or_exit
from export_pipelines.core.storage.migrations.request_table import PENDING_CHANNEL
from export_pipelines.orchestration.monthly.backfills import WORKSPACE
from export_pipelines.orchestration.submitter import DEFAULT_SWEEP_SECONDS, request_submitter

log = logging.getLogger("export_pipelines.submitter")


def cmd_submitter(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_or_exit()
    conninfo = source_url_or_exit()
    stop = threading.Event()
    with request_submitter(settings, Path(args.workspace), code_server_log_level(args.verbose)) as submitter:
        stop_on_signals(stop)
        log.info("listening on %s; sweeping every %.1f s", PENDING_CHANNEL, args.sweep_seconds)
        try:
            submitter.serve(conninfo, stop, args.sweep_seconds)
        except KeyboardInterrupt:
            stop.set()
    return 0


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT end the submitter, whoever started it. Dagster maps SIGTERM to SIGINT's
    handler, and a shell starts a script's background jobs with SIGINT ignored: without handlers of
    our own, `kill` of such a submitter did nothing."""

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def add_commands(sub: Any) -> None:
    """Run beside dagster-daemon (same DAGSTER_HOME and settings)."""
    p = sub.add_parser(
        "submitter",
        help="start export requests' runs as their rows are inserted (LISTEN/NOTIFY), not at the "
        "request sensor's next tick",
    )
    p.add_argument("-w", "--workspace", default=str(WORKSPACE), help="workspace.yaml of the code location")
    p.add_argument(
        "--sweep-seconds",
        type=float,
        default=DEFAULT_SWEEP_SECONDS,
        help="also look for pending rows this often (rows over a tenant's start rate wait for this)",
    )
    p.set_defaults(func=cmd_submitter)
