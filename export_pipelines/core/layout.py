"""Where an export's objects live (DESIGN 3.5): one folder per tenant/resource/export id."""

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
