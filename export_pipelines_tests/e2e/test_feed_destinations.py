"""Feeds that name a destination, through the real API server and tenant_export_job, into real
servers: the second SeaweedFS identity and bucket (s3), Azurite (azure_blob), fake-gcs-server (gcs)
and OpenSSH's sftp server (sftp).

A feed's delivery lands in the destination byte-identical to the same delivery delivered as links
(files, and the manifest but for where and when), signed, with `_SUCCESS`; the next delivery is
incremental and chains to the first one's manifest in the destination. A feed names only its
tenant's destinations (422 naming the field); a destination a feed names is not deleted (409 naming
the feeds); a delivery the destination refuses fails with the code on the row and a notice for the
tenant, and the next delivery after the fix still holds its changes."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from export_pipelines.cli.main import main
from export_pipelines.core.engine.change_tracking import install
from export_pipelines.core.engine.signing import load_signer
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.request_intake import request_run_config
from export_pipelines.orchestration.sensors import record_run_failure, tenant_facing_failure
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve
from export_pipelines_tests.support.destinations import (
    TENANT_S3_CREDENTIALS,
    azure_container,
    azure_credentials,
    gcs_bucket,
    read_folder,
    s3_config,
    sftp_config,
    sftp_credentials,
    tenant_bucket,
)
from export_pipelines_tests.support.readback import read_manifest
from export_pipelines_tests.support.services import run_export_job

TENANT = "t-012"
KINDS = ("s3", "azure_blob", "gcs", "sftp")
FEED = {"resource": "orders", "frequency": "manual", "format": "csv", "compression": "none"}


@pytest.fixture(scope="module")
def api(stack_env, source_url, s3_client, bucket, catalog):
    migrate_api(source_url)
    install(source_url, catalog.resource("orders"))
    tenant_bucket(stack_env, s3_client)
    settings = dataclasses.replace(
        api_settings(stack_env, source_url, bucket, f"feed-dest-{uuid.uuid4().hex[:6]}"),
        destinations_allow_private=True,
    )
    with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(api, source_url):
    with httpx.Client(base_url=api.url, timeout=60, headers=auth(key_for(source_url, TENANT))) as c:
        yield c


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


def destination_body(kind: str, request, stack_env, sftp_server, prefix: str) -> dict[str, Any]:
    if kind == "s3":
        config, creds = s3_config(stack_env, prefix), dict(TENANT_S3_CREDENTIALS)
    elif kind == "azure_blob":
        config = {**azure_container(request.getfixturevalue("azurite"), "tenant-feeds"), "prefix": prefix}
        creds = azure_credentials()
    elif kind == "gcs":
        config, creds = (
            {**gcs_bucket(request.getfixturevalue("fake_gcs"), "tenant-feeds"), "prefix": prefix},
            {},
        )
    else:
        root = Path(sftp_server.root) / prefix
        root.mkdir(exist_ok=True)
        config, creds = sftp_config(sftp_server, path=str(root)), sftp_credentials(sftp_server)
    return {"kind": kind, "name": f"{kind}-{uuid.uuid4().hex[:6]}", "config": config, "credentials": creds}


def deliver(client: httpx.Client, resources: dict[str, Any], feed_id: str) -> tuple[Any, Any]:
    """POST run, then the run the request sensor would launch for the row (its run config from the
    row, as request_intake makes it). Returns (the finished row, the Dagster result)."""
    answer = client.post(f"/v1/feeds/{feed_id}/run")
    assert answer.status_code == 202, answer.text
    with RequestStore(resources["source"].conninfo) as store:
        row = store.get(answer.json()["id"])
        result = run_export_job(
            run_config=request_run_config(row),
            resources=resources,
            raise_on_error=False,
            instance=dg.DagsterInstance.ephemeral(),
            tags={tags.REQUEST_ID: row.id},  # as the request sensor tags the run it launches
        )
        return store.get(row.id), result


def comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without what differs between two deliveries of the same rows: which feed and
    export, where the files lie, when and in which snapshot it was read."""
    out = {k: v for k, v in manifest.items() if k not in ("export_id", "feed_id", "created_at", "snapshot")}
    out["files"] = [
        {**{k: v for k, v in f.items() if k not in ("key", "snapshot")}, "name": f["key"].rsplit("/", 1)[-1]}
        for f in manifest["files"]
    ]
    out["changes"] = {
        k: v for k, v in manifest["changes"].items() if k not in ("snapshot", "previous_manifest")
    }
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_feed_delivery_lands_in_the_destination_as_the_link_delivery(
    kind, request, client, resources, stack_env, sftp_server, s3_client, bucket, pg, prefix, tmp_path, capsys
):
    made = client.post(
        "/v1/destinations", json=destination_body(kind, request, stack_env, sftp_server, prefix)
    )
    assert made.status_code == 201, made.text
    dest = made.json()
    feed = client.post("/v1/feeds", json={**FEED, "destination_id": dest["id"]})
    assert feed.status_code == 201, feed.text
    assert feed.json()["destination_id"] == dest["id"]
    assert client.get(f"/v1/feeds/{feed.json()['id']}").json()["destination_id"] == dest["id"]
    link_feed = client.post("/v1/feeds", json=FEED).json()
    assert link_feed["destination_id"] is None

    link_row, result = deliver(client, resources, link_feed["id"])
    assert result.success and link_row.status == "succeeded"
    link_manifest = read_manifest(s3_client, bucket, link_row.manifest_key)
    link_files = {
        f["key"].rsplit("/", 1)[-1]: s3_client.get_object(Bucket=bucket, Key=f["key"])["Body"].read()
        for f in link_manifest["files"]
    }

    row, result = deliver(client, resources, feed.json()["id"])
    assert result.success and row.status == "succeeded", row.error
    assert str(row.destination_id) == dest["id"] and row.sequence == 1
    config, creds = (
        dest["config"],
        destination_body(kind, request, stack_env, sftp_server, prefix)["credentials"],
    )
    folder = row.manifest_key.rsplit("/", 1)[0] + "/"
    below = f"{config['prefix']}/" if config.get("prefix") else ""  # sftp: the folder is its path
    assert folder.startswith(f"{below}tenant={TENANT}/orders/")  # our layout below its prefix
    files = read_folder(kind, stack_env, config, folder, creds)
    assert set(files) == {*link_files, "manifest.json", "manifest.json.sig", "_SUCCESS"}
    assert {n: d for n, d in files.items() if n.startswith("part-")} == link_files  # byte for byte
    manifest = json.loads(files["manifest.json"])
    assert comparable(manifest) == comparable(link_manifest)
    assert manifest["feed_id"] == feed.json()["id"] and manifest["changes"]["mode"] == "full"
    got = tmp_path / "got"
    got.mkdir()
    for name, data in files.items():
        (got / name).write_bytes(data)
    public = tmp_path / "key.pub"
    public.write_text(load_signer(stack_env["EXPORT_SIGNING_KEY"]).published().public_key)
    assert main(["verify", str(got), "--public-key", str(public)]) == 0, capsys.readouterr()
    # Nothing of it in our bucket: the destination holds the delivery.
    assert not s3_client.list_objects_v2(Bucket=bucket, Prefix=folder).get("Contents")

    # The next delivery: only the change, chained to the first one's manifest in the destination.
    key = pg.execute("SELECT id FROM orders WHERE tenant_id = %s ORDER BY id LIMIT 1", [TENANT]).fetchone()[0]
    pg.execute("UPDATE orders SET note = %s WHERE tenant_id = %s AND id = %s", [f"via {kind}", TENANT, key])
    second, result = deliver(client, resources, feed.json()["id"])
    assert result.success and second.status == "succeeded", second.error
    again = read_folder(kind, stack_env, config, second.manifest_key.rsplit("/", 1)[0] + "/", creds)
    changes = json.loads(again["manifest.json"])["changes"]
    assert changes["mode"] == "incremental" and (changes["upserts"], changes["deletes"]) == (1, 0)
    assert changes["previous_manifest"] == row.manifest_key
    assert "_SUCCESS" in again and f"via {kind}".encode() in again["part-00001.csv"]


def test_a_feed_names_only_its_tenants_destinations(client, source_url, stack_env, api, capsys, monkeypatch):
    other = auth(key_for(source_url, "t-006"))
    body = {"kind": "link", "name": f"l-{uuid.uuid4().hex[:6]}"}
    theirs = httpx.post(f"{api.url}/v1/destinations", json=body, headers=other, timeout=30).json()
    refused = client.post("/v1/feeds", json={**FEED, "destination_id": theirs["id"]})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "destination_id"
    assert "not a destination of this tenant" in refused.json()["error"]["message"]
    for bad in ("nope", 7, str(uuid.uuid4())):
        answer = client.post("/v1/feeds", json={**FEED, "destination_id": bad})
        assert answer.status_code == 422 and answer.json()["error"]["field"] == "destination_id"
    feed = client.post("/v1/feeds", json=FEED).json()
    patched = client.patch(f"/v1/feeds/{feed['id']}", json={"destination_id": theirs["id"]})
    assert patched.status_code == 422 and patched.json()["error"]["field"] == "destination_id"

    # The command line: the same check, and --destination '' goes back to links.
    monkeypatch.setenv("SOURCE_DATABASE_URL", source_url)
    args = ["feeds", "create", "--tenant", TENANT, "--resource", "orders", "--frequency", "manual"]
    assert main([*args, "--destination", theirs["id"]]) == 2
    assert "destination_id: not a destination of this tenant" in capsys.readouterr().err
    mine = client.post("/v1/destinations", json={**body, "name": f"l-{uuid.uuid4().hex[:6]}"}).json()
    assert main([*args, "--destination", mine["id"]]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["destination_id"] == mine["id"]
    assert main(["feeds", "update", made["id"], "--tenant", TENANT, "--destination", ""]) == 0
    assert json.loads(capsys.readouterr().out)["destination_id"] is None


def test_a_destination_a_feed_names_is_not_deleted(client, source_url, monkeypatch, capsys):
    dest = client.post("/v1/destinations", json={"kind": "link", "name": f"l-{uuid.uuid4().hex[:6]}"}).json()
    feeds = [client.post("/v1/feeds", json={**FEED, "destination_id": dest["id"]}).json() for _ in range(2)]
    refused = client.delete(f"/v1/destinations/{dest['id']}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "destination_in_use"
    assert all(f["id"] in refused.json()["error"]["message"] for f in feeds)
    monkeypatch.setenv("SOURCE_DATABASE_URL", source_url)
    assert main(["destinations", "delete", "--tenant", TENANT, dest["id"]]) == 1
    assert feeds[0]["id"] in capsys.readouterr().err
    assert client.get(f"/v1/destinations/{dest['id']}").status_code == 200  # still there
    client.patch(f"/v1/feeds/{feeds[0]['id']}", json={"destination_id": None})
    assert client.delete(f"/v1/feeds/{feeds[1]['id']}").status_code == 204
    assert client.delete(f"/v1/destinations/{dest['id']}").status_code == 204


def test_a_refused_delivery_fails_cleanly_and_the_next_holds_its_changes(
    client, resources, stack_env, sftp_server, pg, prefix, request, example_com_resolves
):
    """The tenant's SFTP folder disappears between two deliveries: the delivery fails as
    destination_not_found (the row says why, the tenant is told), nothing is left under a final
    name, and the failed delivery does not move the feed on: once the folder is back, the next
    delivery is incremental from the last one that succeeded and holds the change."""
    body = destination_body("sftp", request, stack_env, sftp_server, prefix)
    dest = client.post("/v1/destinations", json=body).json()
    notify = {"webhook_url": "https://hooks.example.com/feeds"}
    feed = client.post("/v1/feeds", json={**FEED, "destination_id": dest["id"], "notify": notify}).json()
    first, result = deliver(client, resources, feed["id"])
    assert result.success, first.error
    key = pg.execute(
        "SELECT id FROM orders WHERE tenant_id = %s ORDER BY id DESC LIMIT 1", [TENANT]
    ).fetchone()[0]
    pg.execute(
        "UPDATE orders SET note = 'while the folder was gone' WHERE tenant_id = %s AND id = %s", [TENANT, key]
    )

    root = Path(body["config"]["path"])
    moved = root.with_name(root.name + "-away")
    root.rename(moved)
    try:
        failed, result = deliver(client, resources, feed["id"])
        assert not result.success
        code, message = tenant_facing_failure([e for e in result.all_events if e.is_step_failure])
        run = result.dagster_run.with_tags({**result.dagster_run.tags, "dagster/will_retry": "false"})
        # What the failure sensor does with the run: the row failed, the tenant's notice queued.
        record_run_failure(run, message, resources["source"], resources["notifier"], None, code=code,
                           tenant_error=message)  # fmt: skip
    finally:
        moved.rename(root)
    with RequestStore(resources["source"].conninfo) as store:
        row = store.get(failed.id)
        notice = store.execute(
            "SELECT event, payload FROM export_deliveries WHERE request_id = %s", [failed.id]
        ).fetchone()
    assert (row.status, row.error_code) == ("failed", "destination_not_found")
    assert "config.path" in row.error  # what to fix
    assert notice["event"] == "export.failed" and notice["payload"]["error_code"] == "destination_not_found"
    assert not (root / f"tenant={TENANT}" / "orders" / failed.id).exists()

    fixed, result = deliver(client, resources, feed["id"])
    assert result.success and fixed.sequence == 3, fixed.error
    files = read_folder("sftp", stack_env, body["config"], fixed.manifest_key.rsplit("/", 1)[0] + "/", {})
    changes = json.loads(files["manifest.json"])["changes"]
    assert changes["mode"] == "incremental"
    assert changes["previous_snapshot"] == first.feed_record["snapshot"]  # not the failed delivery's
    assert changes["previous_manifest"] == first.manifest_key
    assert b"while the folder was gone" in files["part-00001.csv"]


def test_the_next_delivery_after_a_destination_change_is_full(client, resources, s3_client, bucket):
    """A feed moved to another destination (here: back to links) delivers everything: the new place
    holds none of the earlier deliveries."""
    dest = client.post("/v1/destinations", json={"kind": "link", "name": f"l-{uuid.uuid4().hex[:6]}"}).json()
    feed = client.post("/v1/feeds", json={**FEED, "destination_id": dest["id"]}).json()
    first, result = deliver(client, resources, feed["id"])
    assert result.success
    client.patch(f"/v1/feeds/{feed['id']}", json={"destination_id": None})
    second, result = deliver(client, resources, feed["id"])
    assert result.success
    changes = read_manifest(s3_client, bucket, second.manifest_key)["changes"]
    assert changes["mode"] == "full" and changes["reason"] == "the feed's destination changed"
    assert changes["previous_manifest"] == first.manifest_key
