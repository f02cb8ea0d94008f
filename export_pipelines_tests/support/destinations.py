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


def azure_container(server: Any, name: str) -> dict[str, Any]:
    """Azurite's container `name` (made if missing); the destination config for it."""
    from azure.storage.blob import BlobServiceClient

    from export_pipelines_dev.azurite import ACCOUNT_KEY, ACCOUNT_NAME

    service = BlobServiceClient(
        server.account_url, credential={"account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY}
    )
    if not service.get_container_client(name).exists():
        service.create_container(name)
    return {"account_url": server.account_url, "container": name}


def azure_credentials() -> dict[str, str]:
    from export_pipelines_dev.azurite import ACCOUNT_KEY, ACCOUNT_NAME

    return {"account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY}


def gcs_bucket(server: Any, name: str) -> dict[str, Any]:
    """fake-gcs-server's bucket `name` (made if missing); the destination config for it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="tenant", credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
    )
    if client.lookup_bucket(name) is None:
        client.create_bucket(name)
    return {"bucket": name, "endpoint_url": server.url}


def read_folder(
    kind: str, stack_env: dict[str, str], config: dict[str, Any], folder: str, credentials: dict[str, Any]
) -> dict[str, bytes]:
    """Every object of an export's folder in a destination (name → bytes), read with the tenant's own
    access, as the tenant would read it; for s3, also that no multipart upload is left open."""
    from export_pipelines.core.delivery.destinations.config import Destination

    dest = Destination("read", "t", kind, "read", config, credentials=credentials)
    found: dict[str, bytes] = {}
    if kind == "s3":
        from export_pipelines.core.storage.s3 import open_uploads

        client = tenant_client(stack_env)
        for obj in client.list_objects_v2(Bucket=config["bucket"], Prefix=folder).get("Contents", []):
            body = client.get_object(Bucket=config["bucket"], Key=obj["Key"])["Body"].read()
            found[obj["Key"].rsplit("/", 1)[-1]] = body
        assert not open_uploads(client, config["bucket"], folder), "no multipart upload left open"
    elif kind == "gcs":
        from export_pipelines.core.delivery.destinations.gcs import bucket_handle

        bucket = bucket_handle(dest, allow_private=True)
        for blob in bucket.client.list_blobs(bucket, prefix=folder):
            found[blob.name.rsplit("/", 1)[-1]] = blob.download_as_bytes()
    elif kind == "azure_blob":
        from export_pipelines.core.delivery.destinations.azure_blob import container_client

        container = container_client(dest, allow_private=True)
        for blob in container.list_blobs(name_starts_with=folder):
            data = container.get_blob_client(blob.name).download_blob().readall()
            found[blob.name.rsplit("/", 1)[-1]] = data
    else:
        from pathlib import Path

        where = Path(config["path"]) / folder
        if where.is_dir():
            found = {p.name: p.read_bytes() for p in where.iterdir()}
    return found
