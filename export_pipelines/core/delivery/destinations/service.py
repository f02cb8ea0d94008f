"""`test`: the answer of `POST /v1/destinations/{id}/test` — write, read back and delete a probe,
and say in one code and one sentence what the tenant can fix."""

from __future__ import annotations

from dataclasses import dataclass

from export_pipelines.core.delivery.destinations import azure_blob, gcs, s3, sftp
from export_pipelines.core.delivery.destinations.config import Destination
from export_pipelines.core.errors import DestinationError


@dataclass(frozen=True)
class TestResult:
    result: str  # ok | unreachable | denied | not_found | invalid
    message: str

    def as_json(self) -> dict[str, str]:
        return {"result": self.result, "message": self.message}


def probe(destination: Destination, *, allow_private: bool = False) -> None:
    if destination.kind == "s3":
        s3.probe(destination, allow_private=allow_private)
    elif destination.kind == "sftp":
        sftp.probe(destination, allow_private=allow_private)
    elif destination.kind == "azure_blob":
        azure_blob.probe(destination, allow_private=allow_private)
    elif destination.kind == "gcs":
        gcs.probe(destination, allow_private=allow_private)


def test_destination(destination: Destination, *, allow_private: bool = False) -> TestResult:
    try:
        probe(destination, allow_private=allow_private)
    except DestinationError as exc:
        return TestResult(exc.result, str(exc))
    if destination.kind == "link":
        return TestResult("ok", "files stay in the service's storage and are shared as links")
    return TestResult("ok", "a probe object was written, read back and deleted")
