"""Where an export's objects live and what they are called: one folder per tenant/resource/export id
(docs/formats.md), and the names a browser saves the files under.

The folder is the trust boundary for objects: whatever deletes, lists or presigns derives it from
(prefix, tenant, resource, export id) with `ExportLocation` and refuses a key outside it
(`owns` / `require_own`); no key is ever taken from a column a tenant can write
(docs/security.md).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from export_pipelines.core.errors import Rejected

MANIFEST_NAME = "manifest.json"
# The manifest's Ed25519 signature lies beside it, under its name + this suffix.
SIGNATURE_SUFFIX = ".sig"
SUCCESS_NAME = "_SUCCESS"

# The same rules the catalog (resource names) and the request (export ids) apply; checked again
# here because a location may be built from a row of export_requests, which apps write.
_RESOURCE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_EXPORT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# An object name inside an export folder: part-00001.csv.gz, manifest.json, _SUCCESS. Folders are
# flat, so a name never holds '/', and '.' / '..' are refused because some S3-compatible servers
# normalise them away.
_OBJECT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ExportLocation:
    prefix: str
    tenant_id: str
    resource: str
    export_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.resource, str) or not _RESOURCE.fullmatch(self.resource):
            raise Rejected(
                f"resource: {self.resource!r} cannot name an export folder; allowed: a catalog "
                "resource name (A-Z a-z 0-9 _ $, starting with a letter or _)",
                "resource",
            )
        if not isinstance(self.export_id, str) or not _EXPORT_ID.fullmatch(self.export_id):
            raise Rejected(
                f"export_id: {self.export_id!r} cannot name an export folder; allowed: 1-128 "
                "characters of A-Z a-z 0-9 . _ -, starting alphanumeric",
                "export_id",
            )
        if not isinstance(self.tenant_id, str) or not self.tenant_id:
            raise Rejected("tenant_id: must be a non-empty string", "tenant_id")

    @property
    def folder(self) -> str:
        # The tenant segment is percent-encoded, so no tenant id can reach another prefix.
        tenant = quote(self.tenant_id, safe="")
        base = self.prefix.strip("/")
        return f"{base + '/' if base else ''}tenant={tenant}/{self.resource}/{self.export_id}/"

    def file_key(self, number: int, extension: str) -> str:
        return f"{self.folder}part-{number:05d}.{extension}"

    @property
    def manifest_key(self) -> str:
        return self.folder + MANIFEST_NAME

    @property
    def success_key(self) -> str:
        return self.folder + SUCCESS_NAME

    def owns(self, key: object) -> bool:
        """Whether `key` is an object directly inside this export's folder (and nothing else)."""
        if not isinstance(key, str) or not key.startswith(self.folder):
            return False
        name = key[len(self.folder) :]
        return bool(_OBJECT_NAME.fullmatch(name)) and name not in (".", "..")

    def require_own(self, key: object) -> str:
        """`key`, if this export owns it; otherwise Rejected (never delete or sign it)."""
        if not self.owns(key):
            raise Rejected(
                f"key: {str(key)[:200]!r} is not an object of export folder {self.folder!r}; "
                "allowed: part-NNNNN.<ext>, manifest.json or _SUCCESS inside that folder",
                "key",
            )
        assert isinstance(key, str)
        return key


def is_export_folder(prefix: str) -> bool:
    """Whether `prefix` has the shape of an export folder: …/tenant=<t>/<resource>/<export id>/.

    What `s3.delete_prefix` requires, so that no caller can delete a tenant's, the bucket's or the
    whole exports prefix by passing a shorter one."""
    if not prefix.endswith("/"):
        return False
    segments = prefix[:-1].split("/")
    if len(segments) < 3 or any(s in ("", ".", "..") for s in segments):
        return False
    tenant, resource, export_id = segments[-3:]
    return (
        tenant.startswith("tenant=")
        and len(tenant) > len("tenant=")
        and bool(_RESOURCE.fullmatch(resource))
        and bool(_EXPORT_ID.fullmatch(export_id))
    )


def file_extension(key: str) -> str:
    """The extension of an export file's key: "csv.gz" for ".../part-00001.csv.gz"."""
    return key.rsplit("/", 1)[-1].split(".", 1)[1]


def _name_char(ch: str) -> str:
    # Letters and digits of every script stay (a tenant "Müller" downloads "…-Müller-…"); anything
    # else (separators, quotes, controls, bidi overrides, spaces) becomes "_".
    return ch if ch.isalnum() or ch in "-_." else "_"


def download_name(location: ExportLocation, number: int, extension: str) -> str:
    """A friendly file name for the browser: resource-tenant-export-nnnnn.ext.

    UTF-8 (NFC): the tenant's letters are kept; `attachment` sends it with an ASCII fallback."""
    stem = unicodedata.normalize("NFC", f"{location.resource}-{location.tenant_id}-{location.export_id}")
    return f"{''.join(_name_char(ch) for ch in stem)}-{number:05d}.{extension}"


def ascii_fallback(filename: str) -> str:
    """The ASCII form of a download name, for `filename="…"`: accents dropped (ü → u), other
    non-ASCII letters, quotes, backslashes and controls as "_"."""
    decomposed = unicodedata.normalize("NFKD", filename)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return "".join(
        ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "_"
        for ch in unicodedata.normalize("NFC", stripped)
    )


def attachment(filename: str) -> str:
    """Content-Disposition that makes a browser save the object under `filename` (RFC 6266).

    HTTP header values are ASCII: `filename="…"` carries the ASCII fallback, and a name with other
    characters adds `filename*=UTF-8''<percent-encoded>` (RFC 5987), which browsers prefer."""
    name = unicodedata.normalize("NFC", filename)
    fallback = ascii_fallback(name)
    if fallback == name:
        return f'attachment; filename="{fallback}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def object_metadata(location: ExportLocation, fmt: str, number: int) -> dict[str, str]:
    """S3 user metadata of an export file: which export it belongs to."""
    # S3 user metadata must be ASCII: percent-encode the tenant id.
    return {
        "tenant-id": quote(location.tenant_id, safe=""),
        "resource": location.resource,
        "export-id": location.export_id,
        "format": fmt,
        "file-number": str(number),
    }
