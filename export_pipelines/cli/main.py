"""`export-pipelines`: the command line for people and scripts; `build_parser` gathers every
command group's commands (docs/architecture.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from export_pipelines.cli import (
    api,
    delivery,
    demo,
    destinations,
    exports,
    feeds,
    metrics,
    monthly,
    submitter,
    tenants,
)
from export_pipelines.cli.common import quiet_unless

# In the order `--help` lists them.
GROUPS = (demo, exports, monthly, submitter, tenants, api, metrics, feeds, delivery, destinations)
VERBOSE_HELP = (
    "show everything: Dagster's beta notices, alembic's lines, its code servers' INFO logs, and "
    "(demo) the run's event log on the console"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export-pipelines",
        description="Tenant exports from PostgreSQL to S3 files: demo run, requests, monthly backfills, "
        "the export API.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    for command in sub.choices.values():
        # Also after the command (`export-pipelines backfill --verbose ...`); SUPPRESS keeps a flag
        # given before the command when it is not repeated after it.
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_unless(args.verbose)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
