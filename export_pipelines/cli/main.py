"""`export-pipelines`: the command line for people and scripts; `build_parser` gathers every
command group's commands (docs/architecture.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from export_pipelines.cli import api, demo, exports, monthly, submitter, tenants

# In the order `--help` lists them.
GROUPS = (demo, exports, monthly, submitter, tenants, api)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export-pipelines",
        description="Tenant exports from PostgreSQL to S3 files: demo run, requests, monthly backfills, "
        "the export API.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
