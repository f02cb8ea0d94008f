"""`export-pipelines verify` (check a delivery against its signed manifest) and `export-pipelines
signing-key generate` (a new manifest signing key) (docs/verifying.md)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from export_pipelines.core.errors import ConfigurationError

CHUNK = 1024 * 1024
TIMEOUT_SECONDS = 60


def _http_chunks(url: str) -> Iterator[bytes]:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:
        while chunk := answer.read(CHUNK):
            yield chunk


def _http_get(url: str) -> bytes | None:
    try:
        return b"".join(_http_chunks(url))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


class _Folder:
    """Where the manifest's siblings are: a local folder, or the URL's folder."""

    def __init__(self, where: str) -> None:
        self.url = where if where.startswith(("http://", "https://")) else None
        if self.url is None:
            path = Path(where)
            self.manifest = path / "manifest.json" if path.is_dir() else path
        else:
            self.manifest_url = self.url

    def read(self, name: str) -> bytes | None:
        if self.url is not None:
            return _http_get(self._sibling(name))
        path = self.manifest.with_name(name)
        return path.read_bytes() if path.is_file() else None

    def manifest_bytes(self) -> bytes | None:
        return self.read(self.manifest.name if self.url is None else self._name())

    def _name(self) -> str:
        return urllib.parse.urlsplit(self.url or "").path.rsplit("/", 1)[-1] or "manifest.json"

    def _sibling(self, name: str) -> str:
        parts = urllib.parse.urlsplit(self.url or "")
        folder = parts.path.rsplit("/", 1)[0]
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"{folder}/{name}", parts.query, ""))

    def open(self, name: str) -> Iterable[bytes] | None:
        from export_pipelines.core.engine.signing import read_chunks

        if self.url is not None:
            data = self._stream(name)
            return data
        path = self.manifest.with_name(name)
        return read_chunks(path) if path.is_file() else None

    def _stream(self, name: str) -> Iterable[bytes] | None:
        url = self._sibling(name)
        try:
            answer = urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

        def chunks() -> Iterator[bytes]:
            with answer:
                while chunk := answer.read(CHUNK):
                    yield chunk

        return chunks()


def _trusted_keys(args: argparse.Namespace) -> dict[str, bytes]:
    import base64

    from export_pipelines.core.engine.signing import load_public_key, load_signer, parse_key_list
    from export_pipelines.settings import Settings

    if args.public_key:
        key = load_public_key(Path(args.public_key).read_text())
        return {key.kid: base64.b64decode(key.public_key)}
    if args.keys_url:
        raw = _http_get(args.keys_url)
        if raw is None:
            raise ConfigurationError(f"--keys-url: {args.keys_url} answered 404")
        return parse_key_list(json.loads(raw))
    settings = Settings.from_env()
    if settings.signing_key:  # the operator's own deployment
        published = load_signer(settings.signing_key).published()
        return {published.kid: base64.b64decode(published.public_key)}
    raise ConfigurationError("give --keys-url URL (GET /v1/signing-keys) or --public-key FILE")


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 only if the signature, and every file's size and SHA-256, hold; 1 naming the first
    thing that does not; 2 on bad arguments."""
    from export_pipelines.core.engine.signing import VerificationFailed, verify_delivery

    try:
        keys = _trusted_keys(args)
        folder = _Folder(args.manifest)
        body = folder.manifest_bytes()
        if body is None:
            print(f"export-pipelines verify: FAILED: manifest.json: not found at {args.manifest}")
            return 1
        manifest = verify_delivery(body, folder.read("manifest.json.sig"), keys, folder.open)
    except VerificationFailed as exc:
        print(f"export-pipelines verify: FAILED: {exc}")
        return 1
    except (ConfigurationError, OSError, ValueError) as exc:
        print(f"export-pipelines verify: {exc}", file=sys.stderr)
        return 2
    files = manifest.get("files", [])
    print(
        f"export-pipelines verify: OK: signature ({manifest.get('signature', {}).get('kid')}), "
        f"{len(files)} file(s), {sum(int(f.get('rows') or 0) for f in files)} rows, "
        f"{sum(int(f.get('bytes') or 0) for f in files)} bytes"
    )
    return 0


def cmd_signing_key_generate(args: argparse.Namespace) -> int:
    from export_pipelines.core.engine.signing import generate_signing_key, load_signer

    key = generate_signing_key()
    published = load_signer(key).published()
    print(json.dumps({"EXPORT_SIGNING_KEY": key, "kid": published.kid, "public_key": published.public_key}))
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check a delivery against its signed manifest: signature, then each file's size and SHA-256",
    )
    p.add_argument("manifest", help="manifest.json (a path, its folder, or an http(s) URL); files beside it")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--keys-url", help="the service's GET /v1/signing-keys URL")
    keys.add_argument("--public-key", help="a file holding the public key (base64 of 32 bytes, or PEM)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("signing-key", help="manifest signing keys")
    verbs = p.add_subparsers(dest="verb", required=True)
    g = verbs.add_parser("generate", help="print a new EXPORT_SIGNING_KEY with its kid and public key")
    g.set_defaults(func=cmd_signing_key_generate)
