"""The stand-ins for tenants' own storage, from the dev stack: a second SeaweedFS identity with its
own keys and bucket (s3), and an OpenSSH server on a loopback port (sftp)."""

from __future__ import annotations

from typing import Any

from export_pipelines.core.storage.s3 import make_s3_client
from export_pipelines_dev.local_stack.seaweed import (
    TENANT_S3_ACCESS_KEY,
    TENANT_S3_BUCKET,
    TENANT_S3_SECRET_KEY,
)

TENANT_S3_CREDENTIALS = {"access_key_id": TENANT_S3_ACCESS_KEY, "secret_access_key": TENANT_S3_SECRET_KEY}


def tenant_bucket(stack_env: dict[str, str], admin_client: Any) -> str:
    """The tenant's bucket (made by the service's admin identity: the tenant's may not create buckets)."""
    try:
        admin_client.head_bucket(Bucket=TENANT_S3_BUCKET)
    except admin_client.exceptions.ClientError:
        admin_client.create_bucket(Bucket=TENANT_S3_BUCKET)
    return TENANT_S3_BUCKET


def tenant_client(stack_env: dict[str, str]) -> Any:
    """A client with the tenant's own keys: what the tenant would read its bucket with."""
    return make_s3_client(
        endpoint_url=stack_env["AWS_ENDPOINT_URL"],
        aws_access_key_id=TENANT_S3_ACCESS_KEY,
        aws_secret_access_key=TENANT_S3_SECRET_KEY,
    )


def s3_config(stack_env: dict[str, str], prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "bucket": TENANT_S3_BUCKET,
        "prefix": prefix,
        "endpoint_url": stack_env["AWS_ENDPOINT_URL"],
        **extra,
    }


def sftp_config(server: Any, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "path": str(server.root),
        "host_key": server.host_key_line,
        **extra,
    }


def sftp_credentials(server: Any) -> dict[str, str]:
    return {"username": server.username, "private_key": server.client_key_pem}
