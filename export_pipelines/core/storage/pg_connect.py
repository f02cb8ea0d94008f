"""The one way the project opens a connection to the source database (export queries, the stores,
the migration, tenant lookups): the URL is checked before libpq sees it, and no error that leaves
here quotes the password (docs/configuration.md).

No project imports, so every module (migrations included) can use it without an import cycle.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg

from export_pipelines.core.errors import ConfigurationError

# The environment variable every source connection comes from (named in errors, never its value).
DATABASE_URL_SETTING = "SOURCE_DATABASE_URL"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
SCRUBBED = "***"


def _url_parts(conninfo: str) -> dict[str, str] | None:
    """The parts of a postgres:// URL, as written (percent-escapes undecoded); None for a
    key=value conninfo string."""
    if not conninfo.startswith(("postgresql://", "postgres://")):
        return None
    # Split as libpq does: user credentials run up to the first '@', unless a '/' comes first
    # (urlsplit would read a '#' or '?' in a password as the start of a fragment or query).
    rest = conninfo.split("://", 1)[1]
    end = next((i for i, ch in enumerate(rest) if ch in "@/"), len(rest))
    has_user = end < len(rest) and rest[end] == "@"
    userinfo, hostpart = (rest[:end], rest[end + 1 :]) if has_user else ("", rest)
    user, _, password = userinfo.partition(":")
    parsed = urlsplit("postgresql://" + hostpart)
    return {
        "user name": user,
        "password": password,
        "host": parsed.netloc,
        "database name": parsed.path,
        "query": parsed.query,
    }


def check_database_url(conninfo: str, setting: str = DATABASE_URL_SETTING) -> str:
    """`conninfo`, if libpq can parse it without echoing it back. A malformed percent-escape
    (`p%zz`) makes libpq quote the token, the password included, into the error: refuse it here
    with a message that names the setting and the part, never the value."""
    parts = _url_parts(conninfo)
    for part, text in (parts or {}).items():
        if _BAD_ESCAPE.search(text):
            raise ConfigurationError(
                f"{setting}: the {part} holds a malformed percent-escape; allowed: %XX with two hex "
                "digits (write a literal % as %25)"
            )
    return conninfo


def _secrets(conninfo: str) -> list[str]:
    """The passwords as written in the URL and decoded (also `?password=`, and a key=value
    conninfo's), longest first."""
    found: set[str] = set()
    parts = _url_parts(conninfo)
    if parts and parts["password"]:
        found |= {parts["password"], unquote(parts["password"])}
    if parts and parts["query"]:
        for name in ("password", "sslpassword"):
            for value in parse_qs(parts["query"]).get(name, []):
                found.add(value)
    match = re.search(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", conninfo)
    if match:
        value = match.group(1)
        found |= {value, value.strip("'")}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(message: str, conninfo: str) -> str:
    """`message` without the connection's password (any form it was written in)."""
    for secret in _secrets(conninfo):
        message = message.replace(secret, SCRUBBED)
    return message


def open_connection(conninfo: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """psycopg.connect for every source connection (export queries and the stores): the URL is
    checked first, and an error that quotes the password is raised again without it."""
    check_database_url(conninfo)
    try:
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.Error as exc:
        message = str(exc)
        cleaned = scrub(message, conninfo)
        if cleaned == message:
            raise
        error_class: type[psycopg.Error] = type(exc)
    # Raised outside the except block, so the original (with the password) is neither the cause
    # nor the context that Dagster and tracebacks print.
    raise error_class(cleaned)
