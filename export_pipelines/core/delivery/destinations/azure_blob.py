"""An `azure_blob` destination (azure-storage-blob): a block blob per file, each engine part staged
as one block as it is produced (`stage_block`, several in flight), the block list committed when the
file is complete — until then the blob does not exist under its name. Account key or SAS token."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from export_pipelines.core.delivery.destinations.config import Destination, check_host
from export_pipelines.core.errors import (
    DestinationDenied,
    DestinationError,
    DestinationInvalid,
    DestinationNotFound,
    DestinationUnreachable,
)

TIMEOUT_SECONDS = 30


def container_client(destination: Destination, *, allow_private: bool = False) -> Any:
    from azure.storage.blob import BlobServiceClient

    config, creds = destination.config, destination.credentials
    check_host("azure_blob", config, allow_private=allow_private)
    credential: Any
    if "sas_token" in creds:
        credential = creds["sas_token"]
    else:
        credential = {"account_name": creds["account_name"], "account_key": creds["account_key"]}
    service = BlobServiceClient(
        config["account_url"],
        credential=credential,
        connection_timeout=TIMEOUT_SECONDS,
        read_timeout=TIMEOUT_SECONDS,
        retry_total=1,
    )
    return service.get_container_client(config["container"])


def azure_error(exc: BaseException, destination: Destination) -> DestinationError:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    container = destination.config.get("container")
    if isinstance(exc, DestinationError):
        return exc
    if isinstance(exc, ClientAuthenticationError):
        return DestinationDenied(
            "credentials: the storage account refused the key or SAS token", "credentials"
        )
    if isinstance(exc, HttpResponseError):
        code = str(getattr(exc, "error_code", "") or "")
        if code in ("ContainerNotFound", "ResourceNotFound") or exc.status_code == 404:
            return DestinationNotFound(
                f"config.container: container {container!r} does not exist", "config.container"
            )
        if exc.status_code == 403 or code.startswith("Authorization") or code == "AuthenticationFailed":
            return DestinationDenied(
                f"credentials: the storage account refused them ({code or exc.status_code}); check the key "
                "or the SAS token's permissions (read, write, delete, list) and expiry",
                "credentials",
            )
        return DestinationInvalid(f"the storage account answered {code or exc.status_code}")
    if isinstance(exc, ServiceRequestError | OSError):
        return DestinationUnreachable(
            "config.account_url: the storage account could not be reached (check the URL)",
            "config.account_url",
        )
    return DestinationInvalid(type(exc).__name__)


def block_id(number: int) -> str:
    """Block ids are base64 of equal length within a blob."""
    return base64.b64encode(f"part-{number:08d}".encode()).decode()


def block_number(block: str) -> int | None:
    """The part number a block id of `block_id` names (None for another writer's block)."""
    try:
        text = base64.b64decode(block).decode()
    except ValueError:
        return None
    return int(text[5:]) if text.startswith("part-") and text[5:].isdigit() else None


def preflight(client: Any) -> None:
    """A read before any write: a missing container answers ContainerNotFound."""
    client.get_container_properties()


def probe(destination: Destination, *, allow_private: bool = False) -> None:
    prefix = destination.prefix
    name = f"{prefix + '/' if prefix else ''}.export-pipelines-probe-{uuid.uuid4().hex}"
    body = b"export-pipelines destination test\n"
    try:
        client = container_client(destination, allow_private=allow_private)
        preflight(client)
        blob = client.get_blob_client(name)
        blob.upload_blob(body, overwrite=True)
        try:
            read = blob.download_blob().readall()
        finally:
            blob.delete_blob()
    except Exception as exc:  # noqa: BLE001 - every failure becomes the tenant's answer
        raise azure_error(exc, destination) from None
    if read != body:
        raise DestinationInvalid("the probe blob read back differs from what was written")
