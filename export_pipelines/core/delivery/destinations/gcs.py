"""A `gcs` destination (google-cloud-storage): each engine part uploaded as a temporary object as it
is produced (several in flight), then composed into the file (32 sources per compose, in rounds for
more) and the temporaries deleted — the file exists under its name only once it is complete. A
service account's JSON key, or none (an emulator)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from export_pipelines.core.delivery.destinations.config import Destination, check_host
from export_pipelines.core.delivery.webhook_target import check_target
from export_pipelines.core.errors import (
    DestinationDenied,
    DestinationError,
    DestinationInvalid,
    DestinationNotFound,
    DestinationUnreachable,
    InvalidWebhook,
)

COMPOSE_MAX = 32
TIMEOUT_SECONDS = 30
PREFLIGHT_DEADLINE_SECONDS = 20.0


def bucket_handle(destination: Destination, *, allow_private: bool = False) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    from google.oauth2 import service_account

    config, creds = destination.config, destination.credentials
    check_host("gcs", config, allow_private=allow_private)
    options: dict[str, Any] = {}
    if config.get("endpoint_url"):
        options["client_options"] = {"api_endpoint": config["endpoint_url"]}
    if "service_account_json" in creds:
        info = service_account_info(creds["service_account_json"], allow_private=allow_private)
        credentials = service_account.Credentials.from_service_account_info(info)
        client = storage.Client(project=info.get("project_id"), credentials=credentials, **options)
    else:
        client = storage.Client(project="export-pipelines", credentials=AnonymousCredentials(), **options)
    return client.bucket(config["bucket"])


def service_account_info(text: str, *, allow_private: bool = False) -> dict[str, Any]:
    """The key file's content as an object. Its `token_uri` is where the client sends a signed
    grant for a token: a tenant-given URL, so it passes the same host rules as the endpoint (no
    loopback, private or metadata address), here and before every connection."""
    try:
        info = json.loads(text)
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise DestinationInvalid(
            "credentials.service_account_json: not a service account key (the JSON key file's content)",
            "credentials",
        )
    token_uri = info.get("token_uri")
    if token_uri is not None:
        try:
            check_target(str(token_uri), allow_private=allow_private)
        except InvalidWebhook as exc:
            detail = str(exc).split(": ", 1)[-1]
            raise DestinationInvalid(
                f"credentials.service_account_json: token_uri {detail}", "credentials"
            ) from None
    return info


def gcs_error(exc: BaseException, destination: Destination) -> DestinationError:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    bucket = destination.config.get("bucket")
    if isinstance(exc, DestinationError):
        return exc
    if isinstance(exc, gexc.NotFound):
        return DestinationNotFound(f"config.bucket: bucket {bucket!r} does not exist", "config.bucket")
    if isinstance(exc, gexc.Forbidden | gexc.Unauthorized):
        return DestinationDenied(
            "credentials: the bucket refused the service account; it needs storage.objects.create, "
            "get, delete and list on the bucket",
            "credentials",
        )
    if isinstance(exc, auth_exc.RefreshError):
        # Google's token endpoint refused the key's signed grant (invalid_grant: a deleted or
        # disabled key or account, a key of another account): the credentials are wrong.
        return DestinationDenied(
            "credentials: Google refused the service account key (deleted, disabled or not this "
            "account's); create a new key and update the destination",
            "credentials",
        )
    if isinstance(exc, gexc.RetryError):  # connection failures retried until the deadline
        return DestinationUnreachable(
            "config.endpoint_url: the storage endpoint could not be reached", "config.endpoint_url"
        )
    if isinstance(exc, gexc.GoogleAPICallError):
        return DestinationInvalid(f"the bucket answered {exc.code}")
    if isinstance(exc, ValueError) and "service_account" in str(exc):
        return DestinationInvalid(
            "credentials.service_account_json: not a service account key", "credentials"
        )
    if isinstance(exc, OSError) or type(exc).__module__.startswith(("requests", "urllib3", "google.auth")):
        return DestinationUnreachable(
            "config.endpoint_url: the storage endpoint could not be reached", "config.endpoint_url"
        )
    return DestinationInvalid(type(exc).__name__)


def preflight(bucket: Any) -> None:
    """A read before any write: a missing bucket answers 404; an endpoint that does not answer is
    given up after PREFLIGHT_DEADLINE_SECONDS of the client's own retries."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket.reload(timeout=TIMEOUT_SECONDS, retry=DEFAULT_RETRY.with_timeout(PREFLIGHT_DEADLINE_SECONDS))


def probe(destination: Destination, *, allow_private: bool = False) -> None:
    prefix = destination.prefix
    name = f"{prefix + '/' if prefix else ''}.export-pipelines-probe-{uuid.uuid4().hex}"
    body = b"export-pipelines destination test\n"
    try:
        bucket = bucket_handle(destination, allow_private=allow_private)
        preflight(bucket)
        blob = bucket.blob(name)
        blob.upload_from_string(body, timeout=TIMEOUT_SECONDS)
        try:
            read = blob.download_as_bytes(timeout=TIMEOUT_SECONDS)
        finally:
            blob.delete(timeout=TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the tenant's answer
        raise gcs_error(exc, destination) from None
    if read != body:
        raise DestinationInvalid("the probe object read back differs from what was written")
