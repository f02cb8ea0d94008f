"""Feeds through the real API server and the real Dagster job: create a feed, make deliveries
(rows in export_requests, run by tenant_export_job as the request sensor would), check each
delivery's manifest, the run's tags, a failed delivery that the next one covers, a full refresh,
and the feed sensor making a due feed's delivery."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import httpx
import pytest

from export_pipelines.core.engine.change_tracking import install
from export_pipelines.core.requests.feed_store import FeedStore, next_due
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.feed_sensor import launch_due_feeds
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve
from export_pipelines_tests.support.readback import csv_rows, read_manifest
from export_pipelines_tests.support.services import run_export_job

TENANT = "t-007"


@pytest.fixture(scope="module")
def api(stack_env, source_url, s3_client, bucket, catalog):
    migrate_api(source_url)
    install(source_url, catalog.resource("orders"))
    with RequestStore(source_url) as store:
        store.execute("DELETE FROM export_requests WHERE tenant_id = %s", [TENANT])
    with FeedStore(source_url) as feeds:
        feeds.execute("DELETE FROM export_feeds WHERE tenant_id = %s", [TENANT])
    prefix = f"feeds-{uuid.uuid4().hex[:8]}"
    with serve(api_settings(stack_env, source_url, bucket, prefix)) as running:
        yield running


@pytest.fixture(scope="module")
def client(api, source_url):
    with httpx.Client(base_url=api.url, timeout=30, headers=auth(key_for(source_url, TENANT))) as c:
        yield c


def deliver(
    client: httpx.Client, resources: dict[str, Any], feed_id: str, path: str = "run"
) -> tuple[Any, dict]:
    """POST run (or full-refresh), then the job the request sensor would launch for the row."""
    answer = client.post(f"/v1/feeds/{feed_id}/{path}")
    assert answer.status_code == 202, answer.text
    doc = answer.json()
    assert doc["feed_id"] == feed_id and doc["status"] == "pending"
    instance = dg.DagsterInstance.ephemeral()
    result = run_export_job(
        run_config=export_run_config(tenant_id=TENANT, resource="orders", request_id=doc["id"]),
        resources=resources,
        raise_on_error=False,
        instance=instance,
    )
    assert result.success
    run_tags = instance.get_run_by_id(result.run_id).tags
    return run_tags, doc


def test_feed_crud_and_validation(client):
    bad = client.post("/v1/feeds", json={"resource": "orders", "frequency": "fortnightly"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "frequency"
    assert "allowed: daily, hourly, manual, monthly, weekly" in bad.json()["error"]["message"]
    bad = client.post("/v1/feeds", json={"resource": "orders", "frequency": "daily", "mode": "sometimes"})
    assert bad.json()["error"]["field"] == "mode"
    bad = client.post(
        "/v1/feeds", json={"resource": "orders", "frequency": "daily", "filters": {"date_from": "2024"}}
    )
    assert bad.json()["error"]["field"] == "filters"
    bad = client.post("/v1/feeds", json={"resource": "orders", "frequency": "daily", "columns": ["amount"]})
    assert bad.json()["error"]["field"] == "columns" and "primary key" in bad.json()["error"]["message"]
    bad = client.post("/v1/feeds", json={"resource": "orders", "frequency": "daily", "destination_id": "d1"})
    assert bad.json()["error"]["field"] == "destination_id"

    made = client.post("/v1/feeds", json={"resource": "orders", "frequency": "daily"})
    assert made.status_code == 201, made.text
    feed = made.json()
    assert (
        feed["mode"] == "incremental"
        and feed["format"] == "csv"
        and made.headers["Location"].endswith(feed["id"])
    )
    assert datetime.fromisoformat(feed["next_due_at"]) == next_due("daily", datetime.now(UTC))
    patched = client.patch(f"/v1/feeds/{feed['id']}", json={"frequency": "manual", "mode": "full"})
    assert patched.status_code == 200 and patched.json()["next_due_at"] is None
    assert patched.json()["mode"] == "full"
    assert [f["id"] for f in client.get("/v1/feeds").json()["data"]] == [feed["id"]]
    assert client.delete(f"/v1/feeds/{feed['id']}").status_code == 204
    assert client.get(f"/v1/feeds/{feed['id']}").status_code == 404


def test_deliveries_full_then_incremental_with_a_failed_one_between(
    client, dagster_resources, s3_client, bucket, pg
):
    feed = client.post(
        "/v1/feeds", json={"resource": "orders", "frequency": "manual", "compression": "none"}
    ).json()
    fid = feed["id"]

    tags1, doc1 = deliver(client, dagster_resources, fid)
    assert doc1["sequence"] == 1
    assert tags1[tags.FEED_ID] == fid and tags1[tags.FEED_SEQUENCE] == "1" and tags1[tags.FEED_MODE] == "full"
    row1 = client.get(f"/v1/exports/{doc1['id']}").json()
    assert row1["status"] == "succeeded"
    with RequestStore(pg.info.dsn) as store:
        manifest_key1 = store.get(doc1["id"]).manifest_key
    m1 = read_manifest(s3_client, bucket, manifest_key1)
    total = pg.execute("SELECT count(*) FROM orders WHERE tenant_id = %s", [TENANT]).fetchone()[0]
    assert m1["changes"]["mode"] == "full" and m1["changes"]["upserts"] == total > 2
    assert m1["changes"]["snapshot"] == tags1[tags.FEED_SNAPSHOT]
    assert m1["schema_hash"] and [c["name"] for c in m1["schema"]][:2] == ["id", "tenant_id"]

    ids = [
        r[0] for r in pg.execute("SELECT id FROM orders WHERE tenant_id = %s ORDER BY id LIMIT 3", [TENANT])
    ]
    pg.execute("UPDATE orders SET note = 'changed once' WHERE tenant_id = %s AND id = %s", [TENANT, ids[0]])
    tags2, doc2 = deliver(client, dagster_resources, fid)
    with RequestStore(pg.info.dsn) as store:
        m2 = read_manifest(s3_client, bucket, store.get(doc2["id"]).manifest_key)
    assert (
        m2["changes"]["mode"] == "incremental"
        and m2["changes"]["previous_snapshot"] == m1["changes"]["snapshot"]
    )
    assert m2["changes"]["previous_manifest"] == manifest_key1
    assert (m2["changes"]["upserts"], m2["changes"]["deletes"]) == (1, 0)
    assert tags2[tags.FEED_PREVIOUS_SNAPSHOT] == m1["changes"]["snapshot"]

    # Delivery 3 fails (as a run that gave up would leave it); then a delete and an update.
    third = client.post(f"/v1/feeds/{fid}/run").json()
    assert client.post(f"/v1/feeds/{fid}/run").status_code == 409  # one delivery at a time
    with RequestStore(pg.info.dsn) as store:
        store.mark_failed(third["id"], "the run failed")
    pg.execute("DELETE FROM orders WHERE tenant_id = %s AND id = %s", [TENANT, ids[1]])
    pg.execute("UPDATE orders SET note = 'changed twice' WHERE tenant_id = %s AND id = %s", [TENANT, ids[2]])
    _, doc4 = deliver(client, dagster_resources, fid)
    assert doc4["sequence"] == 4
    with RequestStore(pg.info.dsn) as store:
        m4 = read_manifest(s3_client, bucket, store.get(doc4["id"]).manifest_key)
    assert m4["changes"]["previous_snapshot"] == m2["changes"]["snapshot"]  # not the failed delivery's
    header, rows = csv_rows(s3_client, bucket, m4)
    assert header[-1] == "_op"
    by_id = {r[0]: r for r in rows}
    assert by_id[str(ids[1])][-1] == "delete" and by_id[str(ids[1])][1] == TENANT
    assert all(v is None for v in by_id[str(ids[1])][2:-1])  # the key, the others null
    assert by_id[str(ids[2])][-1] == "upsert" and "changed twice" in by_id[str(ids[2])]

    listed = client.get("/v1/exports", params={"feed_id": fid}).json()["data"]
    assert [d["sequence"] for d in listed] == [4, 3, 2, 1]

    tags5, doc5 = deliver(client, dagster_resources, fid, path="full-refresh")
    assert tags5[tags.FEED_MODE] == "full"
    with RequestStore(pg.info.dsn) as store:
        m5 = read_manifest(s3_client, bucket, store.get(doc5["id"]).manifest_key)
    assert m5["changes"]["mode"] == "full" and m5["changes"]["upserts"] == total - 1


def test_the_feed_sensor_makes_the_due_feeds_deliveries(client, dagster_resources, source_url):
    feed = client.post("/v1/feeds", json={"resource": "orders", "frequency": "hourly"}).json()
    with FeedStore(source_url) as feeds:
        feeds.execute(
            "UPDATE export_feeds SET next_due_at = %s WHERE id = %s",
            [datetime.now(UTC) - timedelta(minutes=1), feed["id"]],
        )
        summary = launch_due_feeds(dagster_resources["source"], dagster_resources["export_settings"], "off")
        assert summary.startswith("1 deliveries made")
        after = feeds.get(TENANT, feed["id"])
    assert after is not None and after.next_due_at == next_due("hourly", datetime.now(UTC))
    listed = client.get("/v1/exports", params={"feed_id": feed["id"]}).json()["data"]
    assert [(d["sequence"], d["status"]) for d in listed] == [(1, "pending")]
    # Not due any more: the next tick makes nothing.
    assert launch_due_feeds(
        dagster_resources["source"], dagster_resources["export_settings"], "off"
    ).startswith("0")


def test_enterprise_tenants_get_a_default_monthly_feed_in_the_configured_mode(dagster_resources, source_url):
    from export_pipelines_tests.support.services import ENTERPRISE

    source, settings = dagster_resources["source"], dagster_resources["export_settings"]
    with FeedStore(source_url) as feeds:
        feeds.execute("DELETE FROM export_feeds WHERE origin = 'enterprise_default'")
        launch_due_feeds(source, settings, "off")
        assert (
            feeds.execute("SELECT count(*) FROM export_feeds WHERE origin = 'enterprise_default'").fetchone()[
                "count"
            ]
            == 0
        )
        launch_due_feeds(source, settings, "incremental")
        launch_due_feeds(source, settings, "incremental")  # made once
        made = feeds.execute(
            "SELECT tenant_id, resource, frequency, mode FROM export_feeds WHERE origin = 'enterprise_default' "
            "ORDER BY tenant_id"
        ).fetchall()
        assert [(r["tenant_id"], r["resource"], r["frequency"], r["mode"]) for r in made] == [
            (t, "orders", "monthly", "incremental") for t in sorted(ENTERPRISE)
        ]
        launch_due_feeds(source, settings, "full")  # the setting moves: the mode follows
        modes = feeds.execute(
            "SELECT DISTINCT mode FROM export_feeds WHERE origin = 'enterprise_default'"
        ).fetchall()
        assert [r["mode"] for r in modes] == ["full"]
        feeds.execute("DELETE FROM export_feeds WHERE origin = 'enterprise_default'")


def test_a_failed_delivery_run_again_covers_its_window(client, dagster_resources, s3_client, bucket, pg):
    """A delivery whose run failed is run again (a re-execution, or the row re-requested): it starts
    over in a fresh snapshot from the same previous delivery, and includes what changed meanwhile."""
    feed = client.post("/v1/feeds", json={"resource": "orders", "frequency": "manual"}).json()
    _, first = deliver(client, dagster_resources, feed["id"])
    key = pg.execute(
        "SELECT id FROM orders WHERE tenant_id = %s ORDER BY id DESC LIMIT 1", [TENANT]
    ).fetchone()[0]
    pg.execute(
        "UPDATE orders SET note = 'before the failure' WHERE tenant_id = %s AND id = %s", [TENANT, key]
    )
    second = client.post(f"/v1/feeds/{feed['id']}/run").json()
    with RequestStore(pg.info.dsn) as store:
        store.mark_failed(second["id"], "the run failed")
        previous_record = store.get(first["id"]).feed_record
    pg.execute("UPDATE orders SET status = 'refunded' WHERE tenant_id = %s AND id = %s", [TENANT, key])
    instance = dg.DagsterInstance.ephemeral()
    result = run_export_job(
        run_config=export_run_config(tenant_id=TENANT, resource="orders", request_id=second["id"]),
        resources=dagster_resources,
        raise_on_error=False,
        instance=instance,
    )
    assert result.success
    with RequestStore(pg.info.dsn) as store:
        row = store.get(second["id"])
    assert row.status == "succeeded" and row.sequence == 2
    manifest = read_manifest(s3_client, bucket, row.manifest_key)
    assert manifest["changes"]["previous_snapshot"] == previous_record["snapshot"]
    header, rows = csv_rows(s3_client, bucket, manifest)
    mine = [dict(zip(header, r, strict=True)) for r in rows if r[0] == str(key)]
    assert len(mine) == 1 and mine[0]["status"] == "refunded" and mine[0]["note"] == "before the failure"
