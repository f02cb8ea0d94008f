"""Exports into tenants' own destinations by the same engine, against real servers: a second
SeaweedFS identity and bucket (s3) and OpenSSH's sftp server on a loopback port (sftp).

Each arrives byte-identical to the same export delivered as a link, with the same layout, a signed
manifest that `export-pipelines verify` accepts and `_SUCCESS`; a crash mid-upload continues (s3: at
the next part) or leaves nothing under a final name (sftp); wrong credentials, a missing bucket or
folder and an unreachable host end with the matching code and nothing half-written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from export_pipelines.cli.main import main
from export_pipelines.core.delivery.destinations.config import Destination
from export_pipelines.core.delivery.destinations.destination_store import DestinationStore
from export_pipelines.core.delivery.destinations.secrets import SecretBox
from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.destination_export import export_to_destination
from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.engine.signing import generate_signing_key, load_signer
from export_pipelines.core.errors import DestinationError
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines_tests.support.destinations import (
    TENANT_S3_CREDENTIALS,
    s3_config,
    sftp_config,
    sftp_credentials,
    tenant_bucket,
    tenant_client,
)

BIG = "t-big"
PART = 5 << 20
KINDS = ("s3", "sftp", "azure_blob", "gcs")
# The emulators, started (once per session) only when a test of their kind runs.
SERVER_OF = {"azure_blob": "azure", "gcs": "gcs"}
REQUEST = {"format": "csv", "compression": "none"}  # one file of several 5 MiB parts


class Crash(Exception):
    """Stands in for the process dying after a part was uploaded."""


@pytest.fixture(scope="module")
def signer():
    return load_signer(generate_signing_key())


@pytest.fixture(scope="module")
def link_export(source_url, catalog, s3_client, bucket, signer) -> dict[str, bytes]:
    """The reference: the same export delivered as a link, in our bucket; name → bytes."""
    plan = _plan(catalog, source_url, "dest-link", "same-export")
    clear_success_marker(s3_client, bucket, plan.location)
    outcome = run_export(
        plan, conninfo=source_url, catalog=catalog, s3_client=s3_client, bucket=bucket, part_size=PART
    )
    finalize_export(s3_client, bucket, plan, outcome, signer=signer)
    assert sum(f.parts for f in outcome.files) >= 3
    return {
        f.key.rsplit("/", 1)[-1]: s3_client.get_object(Bucket=bucket, Key=f.key)["Body"].read()
        for f in outcome.files
    }


def _plan(catalog, source_url, prefix, export_id, checkpoints=None):
    request = build_request(catalog, resource="orders", tenant_id=BIG, export_id=export_id, **REQUEST)
    return plan_export(source_url, catalog, request, prefix, checkpoints=checkpoints)


@pytest.fixture(scope="module")
def azure(request):
    """Azurite with the tenant's container, started only for the tests that deliver to it."""
    from azure.storage.blob import BlobServiceClient

    from export_pipelines_dev.azurite import ACCOUNT_KEY, ACCOUNT_NAME

    server = request.getfixturevalue("azurite")
    service = BlobServiceClient(
        server.account_url, credential={"account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY}
    )
    if not service.get_container_client("tenant-dest").exists():
        service.create_container("tenant-dest")
    return server


@pytest.fixture(scope="module")
def gcs(request):
    """fake-gcs-server with the tenant's bucket."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    server = request.getfixturevalue("fake_gcs")
    client = storage.Client(
        project="tenant", credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
    )
    if client.lookup_bucket("tenant-dest") is None:
        client.create_bucket("tenant-dest")
    return server


def destination(
    kind: str, stack_env, sftp_server, prefix: str, *, config=None, credentials=None, azure=None
) -> Destination:
    if kind == "gcs":
        base_config, creds = {"bucket": "tenant-dest", "prefix": prefix, "endpoint_url": azure.url}, {}
    elif kind == "azure_blob":
        from export_pipelines_dev.azurite import ACCOUNT_KEY, ACCOUNT_NAME

        base_config = {"account_url": azure.account_url, "container": "tenant-dest", "prefix": prefix}
        creds = {"account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY}
    elif kind == "s3":
        base_config, creds = s3_config(stack_env, prefix), dict(TENANT_S3_CREDENTIALS)
    else:
        (sftp_server.root / prefix).mkdir(exist_ok=True)
        base_config, creds = (
            sftp_config(sftp_server, path=str(sftp_server.root / prefix)),
            sftp_credentials(sftp_server),
        )
    return Destination(
        "test",
        BIG,
        kind,
        "test",
        {**base_config, **(config or {})},
        credentials={**creds, **(credentials or {})},
    )


def delivered(
    kind: str, stack_env, sftp_server, dest: Destination, folder: str, into: Path
) -> dict[str, bytes]:
    """Every object of the export's folder in the destination, as the tenant would read it."""
    into.mkdir(parents=True, exist_ok=True)
    found: dict[str, bytes] = {}
    if kind == "s3":
        client = tenant_client(stack_env)
        prefix = folder  # the plan's folder starts with the destination's prefix
        for obj in client.list_objects_v2(Bucket=dest.config["bucket"], Prefix=prefix).get("Contents", []):
            found[obj["Key"].rsplit("/", 1)[-1]] = client.get_object(
                Bucket=dest.config["bucket"], Key=obj["Key"]
            )["Body"].read()
        assert not open_uploads(client, dest.config["bucket"], prefix), "no multipart upload left open"
    elif kind == "gcs":
        from export_pipelines.core.delivery.destinations.gcs import bucket_handle

        bucket = bucket_handle(dest, allow_private=True)
        for blob in bucket.client.list_blobs(bucket, prefix=folder):
            found[blob.name.rsplit("/", 1)[-1]] = blob.download_as_bytes()
    elif kind == "azure_blob":
        from export_pipelines.core.delivery.destinations.azure_blob import container_client

        container = container_client(dest, allow_private=True)
        for blob in container.list_blobs(name_starts_with=folder):
            found[blob.name.rsplit("/", 1)[-1]] = (
                container.get_blob_client(blob.name).download_blob().readall()
            )
    else:
        where = Path(dest.config["path"]) / folder
        if where.is_dir():
            found = {p.name: p.read_bytes() for p in where.iterdir()}
    for name, data in found.items():
        (into / name).write_bytes(data)
    return found


def _export(
    kind, dest, plan, catalog, source_url, signer, checkpoints=None, on_progress=None, abort_on_error=True
):
    return export_to_destination(
        plan,
        dest,
        conninfo=source_url,
        catalog=catalog,
        signer=signer,
        checkpoints=checkpoints,
        allow_private=True,
        part_size=PART,
        on_progress=on_progress,
        abort_on_error=abort_on_error,
    )


@pytest.fixture
def tenant_s3(stack_env, s3_client):
    return tenant_bucket(stack_env, s3_client)


@pytest.mark.parametrize("kind", KINDS)
def test_export_arrives_byte_identical_to_the_link_export(
    kind,
    link_export,
    stack_env,
    sftp_server,
    tenant_s3,
    catalog,
    source_url,
    signer,
    prefix,
    tmp_path,
    capsys,
    request,
):
    server = request.getfixturevalue(SERVER_OF[kind]) if kind in SERVER_OF else None
    dest = destination(kind, stack_env, sftp_server, prefix, azure=server)
    plan = _plan(catalog, source_url, dest.prefix, "same-export")
    outcome = _export(kind, dest, plan, catalog, source_url, signer)
    files = delivered(kind, stack_env, sftp_server, dest, plan.location.folder, tmp_path / "got")
    parts = {name: data for name, data in files.items() if name.startswith("part-")}
    assert parts == link_export  # byte for byte, under the same names
    assert set(files) == {*link_export, "manifest.json", "manifest.json.sig", "_SUCCESS"}
    assert outcome.rows == plan.rows_total and outcome.files
    public = tmp_path / "key.pub"
    public.write_text(signer.published().public_key)
    assert main(["verify", str(tmp_path / "got"), "--public-key", str(public)]) == 0, capsys.readouterr()


@pytest.mark.parametrize("kind", ["s3", "azure_blob", "gcs"])
def test_crash_mid_upload_continues_at_the_next_part(
    kind,
    request,
    link_export,
    stack_env,
    sftp_server,
    tenant_s3,
    catalog,
    source_url,
    signer,
    prefix,
    tmp_path,
):
    """S3: the multipart upload stays open; Azure: the staged blocks stay uncommitted. Either way
    the next attempt continues at part 3 from the checkpoint, and the file is byte for byte the same."""
    server = request.getfixturevalue(SERVER_OF[kind]) if kind in SERVER_OF else None
    dest = destination(kind, stack_env, sftp_server, prefix, azure=server)
    checkpoints = CheckpointStore(source_url).migrate_once()
    seen = 0

    def crash(_: Any) -> None:
        nonlocal seen
        seen += 1
        if seen >= 2:
            raise Crash("after 2 parts")

    try:
        plan = _plan(catalog, source_url, dest.prefix, "resumed", checkpoints)
        with pytest.raises(Crash):
            _export(kind, dest, plan, catalog, source_url, signer, checkpoints, crash, abort_on_error=False)
        folder = plan.location.folder
        if kind == "s3":
            client = tenant_client(stack_env)
            assert open_uploads(client, dest.config["bucket"], folder), "the upload stays open"
            assert not client.list_objects_v2(Bucket=dest.config["bucket"], Prefix=folder).get("Contents")
        elif kind == "azure_blob":  # staged blocks only: no blob under any name yet
            from export_pipelines.core.delivery.destinations.azure_blob import container_client

            assert not list(container_client(dest, allow_private=True).list_blobs(name_starts_with=folder))
        else:  # part objects only: nothing under the file's name
            from export_pipelines.core.delivery.destinations.gcs import bucket_handle

            bucket = bucket_handle(dest, allow_private=True)
            names = [b.name for b in bucket.client.list_blobs(bucket, prefix=folder)]
            assert names and all(".export-part-" in n for n in names)
        again = _plan(catalog, source_url, dest.prefix, "resumed", checkpoints)
        assert again.resumed
        _export(kind, dest, again, catalog, source_url, signer, checkpoints)
    finally:
        checkpoints.close()
    files = delivered(kind, stack_env, sftp_server, dest, again.location.folder, tmp_path / "got")
    assert {n: d for n, d in files.items() if n.startswith("part-")} == link_export
    manifest = json.loads(files["manifest.json"])
    assert manifest["files"][0]["resumed_at_part"] == 3
    assert manifest["files"][0]["sha256"] == hashlib.sha256(link_export["part-00001.csv"]).hexdigest()


def test_sftp_crash_keeps_complete_files_and_writes_the_open_one_again(
    stack_env, sftp_server, catalog, source_url, signer, prefix, tmp_path, capsys
):
    """File-level resume: a crash in the second file leaves the first complete (kept, not written
    again) and nothing of the second under its final name; the next attempt completes the export."""
    dest = destination("sftp", stack_env, sftp_server, prefix)
    checkpoints = CheckpointStore(source_url).migrate_once()
    request = build_request(
        catalog, resource="orders", tenant_id=BIG, export_id="files", max_rows_per_file=40_000, **REQUEST
    )
    seen: list[Any] = []

    def crash(p: Any) -> None:
        seen.append(p)
        if p.files_completed >= 1:
            raise Crash("in the second file")

    try:
        plan = plan_export(source_url, catalog, request, dest.prefix, checkpoints=checkpoints)
        with pytest.raises(Crash):
            _export("sftp", dest, plan, catalog, source_url, signer, checkpoints, crash)
        folder = Path(dest.config["path"]) / plan.location.folder
        assert sorted(p.name for p in folder.iterdir()) == ["part-00001.csv"]
        first = (folder / "part-00001.csv").stat().st_mtime_ns
        again = plan_export(source_url, catalog, request, dest.prefix, checkpoints=checkpoints)
        assert again.resumed
        outcome = _export("sftp", dest, again, catalog, source_url, signer, checkpoints)
    finally:
        checkpoints.close()
    assert len(outcome.files) == 3 and outcome.rows == again.rows_total
    assert (folder / "part-00001.csv").stat().st_mtime_ns == first  # kept, not written again
    files = delivered("sftp", stack_env, sftp_server, dest, again.location.folder, tmp_path / "got")
    assert set(files) == {
        "part-00001.csv",
        "part-00002.csv",
        "part-00003.csv",
        "manifest.json",
        "manifest.json.sig",
        "_SUCCESS",
    }
    public = tmp_path / "key.pub"
    public.write_text(signer.published().public_key)
    assert main(["verify", str(tmp_path / "got"), "--public-key", str(public)]) == 0, capsys.readouterr()


FAILURES = [
    ("gcs", {"config": {"bucket": "tenant-no-such-bucket"}}, "destination_not_found"),
    ("gcs", {"config": {"endpoint_url": "http://127.0.0.1:9"}}, "destination_unreachable"),
    ("s3", {"credentials": {"secret_access_key": "wrong-secret"}}, "destination_denied"),
    ("s3", {"config": {"bucket": "tenant-no-such-bucket"}}, "destination_not_found"),
    ("s3", {"config": {"endpoint_url": "http://127.0.0.1:9"}}, "destination_unreachable"),
    ("sftp", {"credentials": {"username": "nobody-here"}}, "destination_denied"),
    ("sftp", {"config": {"path": "/no/such/folder"}}, "destination_not_found"),
    ("sftp", {"config": {"port": 9}}, "destination_unreachable"),
    ("azure_blob", {"credentials": {"account_key": "d3JvbmcgYWNjb3VudCBrZXk="}}, "destination_denied"),
    ("azure_blob", {"config": {"container": "tenant-no-such-container"}}, "destination_not_found"),
    (
        "azure_blob",
        {"config": {"account_url": "http://127.0.0.1:9/devstoreaccount1"}},
        "destination_unreachable",
    ),
]


@pytest.mark.parametrize(("kind", "change", "code"), FAILURES, ids=[f"{k}-{c}" for k, _, c in FAILURES])
def test_failing_destination_ends_with_its_code_and_nothing_half_written(
    kind,
    change,
    code,
    stack_env,
    sftp_server,
    tenant_s3,
    catalog,
    source_url,
    signer,
    prefix,
    tmp_path,
    request,
):
    server = request.getfixturevalue(SERVER_OF[kind]) if kind in SERVER_OF else None
    dest = destination(kind, stack_env, sftp_server, prefix, azure=server, **change)
    plan = _plan(catalog, source_url, dest.prefix, "failing")
    with pytest.raises(DestinationError) as failed:
        _export(kind, dest, plan, catalog, source_url, signer)
    assert failed.value.code == code
    assert "wrong-secret" not in str(failed.value) and "PRIVATE KEY" not in str(failed.value)
    good = destination(kind, stack_env, sftp_server, prefix, azure=server)  # look with working credentials
    assert delivered(kind, stack_env, sftp_server, good, plan.location.folder, tmp_path / "got") == {}


def test_deleted_destination_is_not_found_for_the_export(source_url, stack_env):
    box = SecretBox(stack_env["EXPORT_SECRETS_KEY"])
    with DestinationStore(source_url).migrate_once() as store:
        made = store.create(box, BIG, "s3", "gone", s3_config(stack_env, "x"), dict(TENANT_S3_CREDENTIALS))
        assert store.for_writer(box, made.id, BIG).credentials == TENANT_S3_CREDENTIALS
        store.delete(made.id, BIG)
        with pytest.raises(DestinationError) as failed:
            store.for_writer(box, made.id, BIG)
    assert failed.value.code == "destination_not_found"
