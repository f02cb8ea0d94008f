"""tenant_export_job with a destination_id (execute_in_process, real PostgreSQL, the second SeaweedFS
identity and the OpenSSH sftp server): the files, signed manifest and _SUCCESS land in the tenant's
storage, credentials never in run config or the event log; a destination deleted before or while the
export runs fails it as destination_not_found with nothing half-written, the code and message the
failure sensor puts on the request row and in the tenant's notification."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import dagster as dg
import pytest

from export_pipelines.core.delivery.destinations.destination_store import DestinationStore
from export_pipelines.core.delivery.destinations.secrets import SecretBox
from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines.orchestration.sensors import tenant_facing_failure
from export_pipelines_tests.support.destinations import (
    TENANT_S3_CREDENTIALS,
    s3_config,
    sftp_config,
    sftp_credentials,
    tenant_bucket,
    tenant_client,
)
from export_pipelines_tests.support.services import run_export_job

TENANT = "t-007"


@pytest.fixture
def resources(dagster_resources, stack_env, bucket, prefix):
    from export_pipelines.orchestration.resources import ExportSettings

    return {
        **dagster_resources,
        "export_settings": ExportSettings(
            bucket=bucket,
            prefix=prefix,
            signing_key=stack_env["EXPORT_SIGNING_KEY"],
            secrets_key=stack_env["EXPORT_SECRETS_KEY"],
            destinations_allow_private=True,
        ),
    }


def make(source_url, stack_env, kind, config, credentials):
    with DestinationStore(source_url).migrate_once() as store:
        return store.create(
            SecretBox(stack_env["EXPORT_SECRETS_KEY"]),
            TENANT,
            kind,
            f"d-{uuid.uuid4().hex[:6]}",
            config,
            credentials,
        )


def run(resources, **config):
    instance = dg.DagsterInstance.ephemeral()
    result = run_export_job(
        run_config=export_run_config(tenant_id=TENANT, resource="orders", **config),
        resources=resources,
        raise_on_error=False,
        instance=instance,
    )
    logs = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    return result, logs


def test_export_lands_in_the_tenants_bucket(resources, source_url, stack_env, s3_client, prefix):
    tenant_bucket(stack_env, s3_client)
    dest = make(source_url, stack_env, "s3", s3_config(stack_env, prefix), dict(TENANT_S3_CREDENTIALS))
    config = export_run_config(tenant_id=TENANT, resource="orders", destination_id=dest.id)
    assert TENANT_S3_CREDENTIALS["secret_access_key"] not in json.dumps(config)
    result, logs = run(resources, request_id=f"dest-{uuid.uuid4().hex[:6]}", destination_id=dest.id)
    assert result.success, logs
    done = result.output_for_node("exports.finalize")
    assert done.manifest_url.startswith(f"s3://tenant-dest/{prefix}/tenant={TENANT}/orders/")
    client = tenant_client(stack_env)
    folder = done.manifest_key.rsplit("/", 1)[0] + "/"
    names = {
        o["Key"].rsplit("/", 1)[-1]
        for o in client.list_objects_v2(Bucket="tenant-dest", Prefix=folder)["Contents"]
    }
    assert names == {"part-00001.csv.gz", "manifest.json", "manifest.json.sig", "_SUCCESS"}
    assert TENANT_S3_CREDENTIALS["secret_access_key"] not in logs


def test_export_lands_on_the_sftp_server(resources, source_url, stack_env, sftp_server, prefix):
    root = Path(sftp_server.root) / prefix
    root.mkdir()
    dest = make(
        source_url, stack_env, "sftp", sftp_config(sftp_server, path=str(root)), sftp_credentials(sftp_server)
    )
    result, logs = run(resources, request_id=f"dest-{uuid.uuid4().hex[:6]}", destination_id=dest.id)
    assert result.success, logs
    done = result.output_for_node("exports.finalize")
    folder = root / done.manifest_key.rsplit("/", 1)[0]
    assert {p.name for p in folder.iterdir()} == {
        "part-00001.csv.gz",
        "manifest.json",
        "manifest.json.sig",
        "_SUCCESS",
    }
    assert "PRIVATE KEY" not in logs


def test_a_link_destination_is_our_bucket_and_links(
    resources, source_url, stack_env, s3_client, bucket, prefix
):
    dest = make(source_url, stack_env, "link", {}, {})
    result, logs = run(resources, request_id=f"dest-{uuid.uuid4().hex[:6]}", destination_id=dest.id)
    assert result.success, logs
    done = result.output_for_node("exports.finalize")
    assert done.manifest_url.startswith("http") and done.manifest_key.startswith(f"{prefix}/tenant={TENANT}/")
    s3_client.head_object(Bucket=bucket, Key=done.manifest_key)


def test_deleted_destination_fails_the_export_cleanly(resources, source_url, stack_env, s3_client, prefix):
    tenant_bucket(stack_env, s3_client)
    dest = make(source_url, stack_env, "s3", s3_config(stack_env, prefix), dict(TENANT_S3_CREDENTIALS))
    with DestinationStore(source_url) as store:
        store.delete(dest.id, TENANT)
    result, _ = run(resources, request_id=f"dest-{uuid.uuid4().hex[:6]}", destination_id=dest.id)
    assert not result.success
    code, message = tenant_facing_failure([e for e in result.all_events if e.is_step_failure])
    assert code == "destination_not_found"
    assert "deleted" in message
    client = tenant_client(stack_env)
    assert not client.list_objects_v2(Bucket="tenant-dest", Prefix=prefix + "/").get("Contents")
    assert not open_uploads(client, "tenant-dest", prefix + "/")


def test_destination_deleted_while_the_export_runs_stops_it_cleanly(
    resources, source_url, stack_env, s3_client, prefix, monkeypatch
):
    """Deleted between the plan and the upload: the export stops at its next part, its upload
    aborted, no _SUCCESS; the run fails as destination_not_found."""
    from export_pipelines.orchestration import destination_steps

    tenant_bucket(stack_env, s3_client)
    dest = make(source_url, stack_env, "s3", s3_config(stack_env, prefix), dict(TENANT_S3_CREDENTIALS))
    monkeypatch.setattr(destination_steps, "DESTINATION_CHECK_SECONDS", 0.0)  # check at every part
    real = destination_steps.export_to_destination

    def delete_then_export(*args, **kwargs):
        with DestinationStore(source_url) as store:
            store.delete(dest.id, TENANT)
        return real(*args, **kwargs)

    monkeypatch.setattr(destination_steps, "export_to_destination", delete_then_export)
    result, _ = run(resources, request_id=f"dest-{uuid.uuid4().hex[:6]}", destination_id=dest.id)
    assert not result.success
    assert (
        tenant_facing_failure([e for e in result.all_events if e.is_step_failure])[0]
        == "destination_not_found"
    )
    client = tenant_client(stack_env)
    keys = [
        o["Key"]
        for o in client.list_objects_v2(Bucket="tenant-dest", Prefix=prefix + "/").get("Contents", [])
    ]
    assert not any(k.endswith(("_SUCCESS", "manifest.json", ".csv.gz")) for k in keys)
    assert not open_uploads(client, "tenant-dest", prefix + "/")
