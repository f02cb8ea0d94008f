"""`export-pipelines destinations create|list|delete|test` (the API's verbs on `/v1/destinations`,
for operators) and `export-pipelines secrets rotate` (re-encrypt stored destination credentials
with the newest EXPORT_SECRETS_KEY) (docs/destinations.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from export_pipelines.cli.common import settings_or_exit, source_url_or_exit
from export_pipelines.core.errors import ConfigurationError, DestinationError, DestinationInUse


def _box(settings: Any) -> Any:
    from export_pipelines.core.delivery.destinations.secrets import SecretBox

    return SecretBox(settings.secrets_key) if settings.secrets_key else None


def _json_arg(text: str | None, flag: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    except (OSError, ValueError) as exc:
        raise DestinationError(f"{flag}: not a JSON object ({exc.__class__.__name__})", flag) from None
    if not isinstance(value, dict):
        raise DestinationError(f"{flag}: must be a JSON object", flag)
    return value


def cmd_create(args: argparse.Namespace) -> int:
    from export_pipelines.core.delivery.destinations.config import check_destination
    from export_pipelines.core.delivery.destinations.destination_store import DestinationStore

    settings = settings_or_exit()
    url = source_url_or_exit()
    try:
        # Credentials from a file (or '-' for stdin), never from the command line: argv is visible
        # to every user of the machine (ps) and lands in shell history.
        raw = sys.stdin.read() if args.credentials_file == "-" else None
        credentials = (
            _json_arg(raw, "--credentials-file")
            if raw is not None
            else _json_arg(
                "@" + args.credentials_file if args.credentials_file else None, "--credentials-file"
            )
        )
        kind, name, config, creds = check_destination(
            args.kind,
            args.name,
            _json_arg(args.config, "--config"),
            credentials,
            allow_private=settings.destinations_allow_private,
        )
        with DestinationStore(url).migrate_once() as store:
            created = store.create(_box(settings), args.tenant, kind, name, config, creds)
    except (DestinationError, ConfigurationError) as exc:
        print(f"export-pipelines destinations create: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(created.public()))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from export_pipelines.core.delivery.destinations.destination_store import DestinationStore

    with DestinationStore(source_url_or_exit()).migrate_once() as store:
        for d in store.list(args.tenant):
            print(json.dumps(d.public()))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from export_pipelines.core.delivery.destinations.destination_store import DestinationStore

    with DestinationStore(source_url_or_exit()).migrate_once() as store:
        try:
            deleted = store.delete(args.id, args.tenant)
        except DestinationInUse as exc:
            print(f"export-pipelines destinations delete: {exc}", file=sys.stderr)
            return 1
        if not deleted:
            print(
                f"export-pipelines destinations delete: no destination {args.id} of {args.tenant}",
                file=sys.stderr,
            )
            return 1
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """Exit 0 when the probe holds, 1 otherwise; prints `{result, message}` either way."""
    from export_pipelines.core.delivery.destinations.destination_store import DestinationStore
    from export_pipelines.core.delivery.destinations.service import test_destination

    settings = settings_or_exit()
    try:
        with DestinationStore(source_url_or_exit()).migrate_once() as store:
            found = store.for_writer(_box(settings), args.id, args.tenant)
    except (DestinationError, ConfigurationError) as exc:
        print(f"export-pipelines destinations test: {exc}", file=sys.stderr)
        return 2
    result = test_destination(found, allow_private=settings.destinations_allow_private)
    print(json.dumps(result.as_json()))
    return 0 if result.result == "ok" else 1


def cmd_secrets_rotate(args: argparse.Namespace) -> int:
    from export_pipelines.core.delivery.destinations.destination_store import DestinationStore
    from export_pipelines.core.delivery.destinations.secrets import SecretBox

    settings = settings_or_exit()
    try:
        box = SecretBox(settings.secrets_key)
        with DestinationStore(source_url_or_exit()).migrate_once() as store:
            count = store.rotate(box)
    except ConfigurationError as exc:
        print(f"export-pipelines secrets rotate: {exc}", file=sys.stderr)
        return 2
    print(
        f"export-pipelines secrets rotate: {count} destination credential(s) re-encrypted with the newest key"
    )
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("destinations", help="a tenant's own buckets, containers and SFTP servers")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("create", help="add a destination (credentials from a file, never argv)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--kind", required=True, help="link | s3 | azure_blob | gcs | sftp")
    c.add_argument("--name", required=True)
    c.add_argument("--config", help="JSON object, or @FILE")
    c.add_argument("--credentials-file", help="a JSON file of the credentials, or - for stdin")
    c.set_defaults(func=cmd_create)
    ls = verbs.add_parser("list", help="the tenant's destinations (credentials as fingerprints)")
    ls.add_argument("--tenant", required=True)
    ls.set_defaults(func=cmd_list)
    d = verbs.add_parser("delete", help="delete one; exports still naming it fail as destination_not_found")
    d.add_argument("--tenant", required=True)
    d.add_argument("id")
    d.set_defaults(func=cmd_delete)
    t = verbs.add_parser("test", help="write, read back and delete a probe object")
    t.add_argument("--tenant", required=True)
    t.add_argument("id")
    t.set_defaults(func=cmd_test)

    s = sub.add_parser("secrets", help="destination credentials at rest")
    sverbs = s.add_subparsers(dest="verb", required=True)
    r = sverbs.add_parser(
        "rotate", help="re-encrypt every stored credential with the first key of EXPORT_SECRETS_KEY"
    )
    r.set_defaults(func=cmd_secrets_rotate)
