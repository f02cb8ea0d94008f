"""An `s3` destination: any S3-compatible endpoint, with access keys or an IAM role assumed with the
tenant's external id. The export is written by the same engine as ours (multipart parts as they are
produced, checkpointed, resumed part by part), only with the tenant's client and bucket."""

from __future__ import annotations

import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from export_pipelines.core.delivery.destinations.config import Destination, check_host
from export_pipelines.core.errors import (
    DestinationDenied,
    DestinationError,
    DestinationInvalid,
    DestinationNotFound,
    DestinationUnreachable,
)
from export_pipelines.core.storage.s3 import make_s3_client

_NOT_FOUND = ("NoSuchBucket",)
_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "403")
ROLE_SESSION_SECONDS = 3600


def s3_error(exc: BaseException, destination: Destination) -> DestinationError:
    """What a botocore error means for the tenant (never the credentials, never our network)."""
    bucket = destination.config.get("bucket")
    if isinstance(exc, DestinationError):
        return exc
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            return DestinationNotFound(f"config.bucket: bucket {bucket!r} does not exist", "config.bucket")
        if code in _DENIED:
            return DestinationDenied(
                f"credentials: the destination refused them ({code}); check the key and its permission "
                f"to put, get and delete objects in {bucket!r}",
                "credentials",
            )
        return DestinationInvalid(f"the destination answered {code}", None)
    if isinstance(exc, EndpointConnectionError | BotoCoreError | OSError):
        return DestinationUnreachable(
            "config.endpoint_url: the endpoint could not be reached (check the URL and that it accepts "
            "connections)",
            "config.endpoint_url",
        )
    return DestinationInvalid(str(type(exc).__name__))


def destination_client(
    destination: Destination, *, allow_private: bool = False, max_attempts: int = 3
) -> Any:
    """A boto3 client for the tenant's bucket, after the host check (again, at connect time)."""
    config, creds = destination.config, destination.credentials
    check_host("s3", config, allow_private=allow_private)
    keys: dict[str, Any] = {
        "aws_access_key_id": creds.get("access_key_id"),
        "aws_secret_access_key": creds.get("secret_access_key"),
    }
    if config.get("role_arn"):
        keys = assume_role(config["role_arn"], config["external_id"], config.get("region"))
    return make_s3_client(
        endpoint_url=config.get("endpoint_url"),
        region_name=config.get("region") or "us-east-1",
        max_attempts=max_attempts,
        **keys,
    )


def assume_role(
    role_arn: str, external_id: str, region: str | None, sts_client: Any = None
) -> dict[str, Any]:
    """Temporary keys for the tenant's role: our own identity (boto3's chain) assumes it, the
    external id proving the call is made for this tenant (the confused-deputy guard)."""
    import boto3

    sts = sts_client or boto3.session.Session().client("sts", region_name=region or "us-east-1")
    try:
        answer = sts.assume_role(
            RoleArn=role_arn,
            RoleSessionName=f"export-pipelines-{uuid.uuid4().hex[:12]}",
            ExternalId=external_id,
            DurationSeconds=ROLE_SESSION_SECONDS,
        )
    except ClientError as exc:
        raise DestinationDenied(
            "config.role_arn: the role could not be assumed; check its trust policy names our account "
            "and the external id",
            "config.role_arn",
        ) from exc
    creds = answer["Credentials"]
    return {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }


def preflight(client: Any, destination: Destination) -> None:
    """One cheap read before any write: a missing bucket answers NoSuchBucket to a list, where a
    write may only say AccessDenied (S3-compatible servers differ)."""
    prefix = destination.prefix
    client.list_objects_v2(
        Bucket=destination.config["bucket"], Prefix=prefix + "/" if prefix else "", MaxKeys=1
    )


def probe(destination: Destination, *, allow_private: bool = False) -> None:
    """Write, read back and delete a probe object under the prefix; raises DestinationError."""
    bucket = destination.config["bucket"]
    prefix = destination.prefix
    key = f"{prefix + '/' if prefix else ''}.export-pipelines-probe-{uuid.uuid4().hex}"
    body = b"export-pipelines destination test\n"
    try:
        client = destination_client(destination, allow_private=allow_private, max_attempts=1)
        preflight(client, destination)
        client.put_object(Bucket=bucket, Key=key, Body=body)
        try:
            read = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        finally:
            client.delete_object(Bucket=bucket, Key=key)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the tenant's answer
        raise s3_error(exc, destination) from None
    if read != body:
        raise DestinationInvalid("the probe object read back differs from what was written")
