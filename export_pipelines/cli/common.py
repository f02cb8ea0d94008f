"""What the command groups share: the settings and the source database URL (or exit with the
message), the request store, the S3 client, the formats' help text, and how much a command prints
(quiet unless --verbose)."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from export_pipelines.core.errors import ConfigurationError
from export_pipelines.core.formats import format_names
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.settings import Settings

FORMAT_HELP = f"one of: {', '.join(format_names())} (csv_excel: the CSV excel profile)"
# What the Dagster code servers a command starts (backfill, submitter) log: their start and stop
# lines are for --verbose.
QUIET_CODE_SERVER = "WARNING"
VERBOSE_CODE_SERVER = "INFO"


def quiet_unless(verbose: bool) -> None:
    """Quiet by default: Dagster's notices that an API is in beta or preview, and the lines alembic
    logs while Dagster's instance checks its own tables, are for whoever develops the code
    location, not for whoever runs a command. --verbose leaves every warning and logger as is."""
    if verbose:
        return
    from dagster_shared.utils.warnings import BetaWarning, PreviewWarning

    for category in (BetaWarning, PreviewWarning):
        warnings.filterwarnings("ignore", category=category)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def code_server_log_level(verbose: bool) -> str:
    return VERBOSE_CODE_SERVER if verbose else QUIET_CODE_SERVER


def settings_or_exit() -> Settings:
    """The settings from the environment; a bad one ends the command with its message."""
    try:
        return Settings.from_env()
    except ConfigurationError as exc:
        sys.exit(str(exc))


def source_url_or_exit() -> str:
    """SOURCE_DATABASE_URL; unset or malformed ends the command with the message (never its password)."""
    try:
        return settings_or_exit().require_source_database_url()
    except ConfigurationError as exc:
        sys.exit(str(exc))


def request_store() -> RequestStore:
    """The request store on the source database, its tables migrated once."""
    try:
        return RequestStore(source_url_or_exit()).migrate_once()
    except ConfigurationError as exc:  # e.g. a malformed SOURCE_DATABASE_URL (never its password)
        sys.exit(f"export-pipelines: {exc}")


def s3_client(settings: Settings) -> Any:
    from export_pipelines.core.storage.s3 import make_s3_client

    return make_s3_client(**settings.s3_client_options())
