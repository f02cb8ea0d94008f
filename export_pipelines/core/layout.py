"""Where an export's objects live and what they are called: one folder per tenant/resource/export id
(README "Output layout"), and the names a browser saves the files under."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

MANIFEST_NAME = "manifest.json"
SUCCESS_NAME = "_SUCCESS"


@dataclass(frozen=True)
class ExportLocation:
    prefix: str
    tenant_id: str
    resource: str
    export_id: str

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


def file_extension(key: str) -> str:
    """The extension of an export file's key: "csv.gz" for ".../part-00001.csv.gz"."""
    return key.rsplit("/", 1)[-1].split(".", 1)[1]


def download_name(location: ExportLocation, number: int, extension: str) -> str:
    """A friendly file name for the browser: resource-tenant-export-nnnnn.ext, ASCII only."""
    # str.isalnum() is true for "ä" too: an HTTP header value must stay ASCII.
    safe = "".join(
        ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "_"
        for ch in f"{location.resource}-{location.tenant_id}-{location.export_id}"
    )
    return f"{safe}-{number:05d}.{extension}"


def attachment(filename: str) -> str:
    """Content-Disposition that makes a browser save the object under `filename`."""
    return f'attachment; filename="{filename}"'


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
