"""Monthly partitions delivered as exports of their tenant: one request row per
(tenant, resource, month), listed by the API, notified to the tenant's default targets, updated by
re-runs, never refused by the tenant's cap; the tenant-notify CLI and /v1/notify-settings."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import uuid

import dagster as dg
import httpx
import pytest
from psycopg.rows import dict_row

from export_pipelines.cli.main import main
from export_pipelines.core.errors import InvalidRequest
from export_pipelines.core.requests.monthly_rows import MonthlyRows
from export_pipelines.core.requests.request_row import monthly_request_id
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.requests.tenant_settings import TenantSettingsStore
from export_pipelines.orchestration.monthly.monthly_asset import monthly_job_with
from export_pipelines.orchestration.sensors import record_run_failure
from export_pipelines.settings import Settings
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve

# hooks.example.com must resolve: the notify settings check the host when they are set.
pytestmark = pytest.mark.usefixtures("example_com_resolves")
HOOK = "https://hooks.example.com/monthly-dumps"


INSTANCES: dict[str, dg.DagsterInstance] = {}


def run_partition(resources, tenant: str, month: str) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("tenants", [tenant])
    result = monthly_job_with(Settings(), resources).execute_in_process(
        partition_key=f"{month}-01|{tenant}", instance=instance, raise_on_error=False
    )
    INSTANCES[result.run_id] = instance
    return result


def fresh_month_row(source_url: str, tenant: str, month: str) -> str:
    """The month's row id, with any row an earlier test session left removed."""
    rid = monthly_request_id(tenant, "orders", month)
    with RequestStore(source_url).migrate_once() as store:
        store.execute("DELETE FROM export_deliveries WHERE request_id = %s", [rid])
        store.execute("DELETE FROM export_requests WHERE id = %s", [rid])
    return rid


def rows_of(db, rid: str) -> list[dict]:
    return db.execute("SELECT * FROM export_requests WHERE id = %s", [rid]).fetchall()


@pytest.fixture(autouse=True)
def no_tenant_defaults_left(source_url):
    """Tenants' default targets set here, and the notifications queued to them, must not reach
    other test modules (their delivery sensor sends every due delivery)."""
    yield
    with TenantSettingsStore(source_url).migrate_once() as settings:
        settings.execute("DELETE FROM export_tenant_settings WHERE tenant_id LIKE 't-%%'")
        settings.execute(
            "DELETE FROM export_deliveries WHERE target = ANY(%s)", [[HOOK, "data@t-005.example.com"]]
        )


@pytest.fixture
def db(source_url):
    import psycopg

    with psycopg.connect(source_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def test_monthly_partition_is_an_export_of_its_tenant(
    dagster_resources, source_url, stack_env, bucket, prefix, pg, db
):
    tenant, other, month = "t-005", "t-010", "2024-07"
    rid = fresh_month_row(source_url, tenant, month)
    with TenantSettingsStore(source_url).migrate_once() as settings:
        settings.set(tenant, webhook_url=HOOK, email="data@t-005.example.com")

    result = run_partition(dagster_resources, tenant, month)
    assert result.success
    (row,) = rows_of(db, rid)
    assert row["origin"] == "monthly" and row["export_id"] == month
    assert row["status"] == "succeeded" and row["tenant_id"] == tenant
    assert row["filters"] == {
        "date_from": "2024-07-01T00:00:00+00:00",
        "date_to": "2024-08-01T00:00:00+00:00",
    }
    assert row["run_id"] == result.run_id and row["attempt"] == 1
    assert row["manifest_key"] == f"{prefix}/tenant={tenant}/orders/{month}/manifest.json"
    # The run carries the row's tags, so the failure sensor, the reaper and cancel find it.
    run_tags = INSTANCES[result.run_id].get_run_by_id(result.run_id).tags
    assert run_tags["export/request_id"] == rid and run_tags["export/attempt"] == "1"

    # The tenant's default targets were notified, about this row.
    deliveries = db.execute(
        "SELECT channel, target, event, payload FROM export_deliveries WHERE request_id = %s ORDER BY channel",
        [rid],
    ).fetchall()
    assert [(d["channel"], d["target"], d["event"]) for d in deliveries] == [
        ("email", "data@t-005.example.com", "export.succeeded"),
        ("webhook", HOOK, "export.succeeded"),
    ]
    assert deliveries[1]["payload"]["export_id"] == rid

    # GET /v1/exports lists it for the tenant's key only; /files gives the month's rows.
    migrate_api(source_url)
    with (
        serve(api_settings(stack_env, source_url, bucket, prefix)) as api,
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        mine, theirs = key_for(source_url, tenant), key_for(source_url, other)
        listed = client.get("/v1/exports?limit=100", headers=auth(mine)).json()["data"]
        assert rid in [e["id"] for e in listed]
        assert rid not in [
            e["id"] for e in client.get("/v1/exports?limit=100", headers=auth(theirs)).json()["data"]
        ]
        assert client.get(f"/v1/exports/{rid}", headers=auth(theirs)).status_code == 404
        status = client.get(f"/v1/exports/{rid}", headers=auth(mine)).json()
        assert status["status"] == "succeeded"
        files = client.get(f"/v1/exports/{rid}/files", headers=auth(mine))
        assert files.status_code == 200, files.text
        got = []
        for entry in files.json()["data"]:
            body = httpx.get(entry["url"]).content
            assert hashlib.sha256(body).hexdigest() == entry["sha256"]
            got += [r[0] for r in list(csv.reader(io.StringIO(gzip.decompress(body).decode())))[1:]]
        expected = pg.execute(
            "SELECT id::text FROM orders WHERE tenant_id = %s AND created_at >= '2024-07-01' "
            "AND created_at < '2024-08-01' ORDER BY id",
            [tenant],
        ).fetchall()
        assert got == [e[0] for e in expected] and got
        with client.stream("GET", f"/v1/exports/{rid}/events", headers=auth(mine)) as events:
            text = "".join(events.iter_text())
        assert "event: succeeded" in text

    # A re-run of the same partition (the UI's re-execution, a backfill) updates the same row.
    again = run_partition(dagster_resources, tenant, month)
    assert again.success
    (row2,) = rows_of(db, rid)
    assert row2["run_id"] == again.run_id and row2["attempt"] == 2 and row2["status"] == "succeeded"
    assert (
        db.execute(
            "SELECT count(*) AS n FROM export_requests WHERE tenant_id = %s AND export_id = %s",
            [tenant, month],
        ).fetchone()["n"]
        == 1
    )


def test_tenant_at_its_cap_still_gets_its_monthly_row(dagster_resources, source_url, db):
    tenant, month = "t-015", "2024-08"
    rid = fresh_month_row(source_url, tenant, month)
    made = []
    with RequestStore(source_url).migrate_once() as store:
        store.execute(
            "UPDATE export_requests SET status = 'failed' WHERE tenant_id = %s "
            "AND status IN ('pending', 'queued', 'running')",
            [tenant],
        )
        try:
            with pytest.raises(InvalidRequest):
                for _ in range(100):
                    made.append(store.create(tenant_id=tenant, resource="orders"))
            result = run_partition(dagster_resources, tenant, month)
            assert result.success
            (row,) = rows_of(db, rid)
            assert row["status"] == "succeeded" and row["origin"] == "monthly"
            # A running monthly row does not count against the cap: with one slot free, a
            # running monthly row of another month leaves it free.
            store.execute("UPDATE export_requests SET status = 'failed' WHERE id = %s", [made.pop()])
            other = fresh_month_row(source_url, tenant, "2024-09")
            MonthlyRows.on(store.conn).upsert(
                tenant_id=tenant,
                resource="orders",
                month="2024-09",
                format="csv",
                compression=None,
                filters={},
                columns=None,
                run_id="run-x",
            )
            made.append(other)
            made.append(store.create(tenant_id=tenant, resource="orders"))
        finally:
            if made:
                store.execute(
                    "UPDATE export_requests SET status = 'failed' WHERE id = ANY(%s::uuid[])", [made]
                )


def test_failed_monthly_run_fails_its_row(dagster_resources, source_url, db, prefix):
    from export_pipelines.orchestration.resources import ExportSettings

    tenant, month = "t-020", "2024-10"
    rid = fresh_month_row(source_url, tenant, month)
    broken = {
        **dagster_resources,
        "export_settings": ExportSettings(bucket="no-such-bucket-m13", prefix=prefix),
    }
    with TenantSettingsStore(source_url).migrate_once() as settings:
        settings.set(tenant, webhook_url=HOOK, email=None)
    result = run_partition(broken, tenant, month)
    assert not result.success
    run = INSTANCES[result.run_id].get_run_by_id(result.run_id)
    assert run.tags["export/request_id"] == rid
    # The run itself failed its row and told the tenant (a batch run serves several rows: it
    # cannot leave that to the failure sensor, which knows one row per run).
    (row,) = rows_of(db, rid)
    assert row["status"] == "failed" and row["error_code"] == "storage_unavailable"
    # Then the failure sensor sees the run: the row is failed already, nobody is told twice.
    final = run.with_tags({**run.tags, "dagster/will_retry": "false"})
    record_run_failure(
        final,
        "S3 NoSuchBucket",
        broken["source"],
        broken["notifier"],
        None,
        code="storage_unavailable",
        tenant_error="storage is not reachable",
    )
    (row,) = rows_of(db, rid)
    assert row["status"] == "failed" and row["error_code"] == "storage_unavailable"
    (delivery,) = db.execute(
        "SELECT target, event FROM export_deliveries WHERE request_id = %s", [rid]
    ).fetchall()
    assert delivery == {"target": HOOK, "event": "export.failed"}
    with TenantSettingsStore(source_url) as settings:
        settings.clear(tenant)


def test_tenant_notify_cli(source_url, capsys):
    tenant = "t-002"
    assert main(["tenant-notify", "--tenant", tenant, "--clear"]) == 0
    capsys.readouterr()
    assert main(["tenant-notify", "--tenant", tenant]) == 0
    assert '"webhook_url": null' in capsys.readouterr().out
    assert main(["tenant-notify", "--tenant", tenant, "--webhook-url", HOOK]) == 0
    assert HOOK in capsys.readouterr().out
    assert main(["tenant-notify", "--tenant", tenant, "--email", "ops@t-002.example.com"]) == 0
    out = capsys.readouterr().out
    assert HOOK in out and "ops@t-002.example.com" in out  # the webhook kept
    assert main(["tenant-notify", "--tenant", tenant, "--webhook-url", "ftp://x.example.com/"]) == 2
    assert "--webhook-url:" in capsys.readouterr().err
    assert main(["tenant-notify", "--tenant", tenant, "--email", "not an address"]) == 2
    assert "--email:" in capsys.readouterr().err
    assert main(["tenant-notify", "--tenant", "no-such-tenant-m13", "--email", "a@b.example.com"]) == 2
    assert "--tenant:" in capsys.readouterr().err
    assert main(["tenant-notify", "--tenant", tenant, "--clear"]) == 0
    assert '"email": null' in capsys.readouterr().out
    with TenantSettingsStore(source_url) as s:
        assert s.get(tenant).webhook_url is None


def test_notify_settings_api(source_url, stack_env, bucket, prefix):
    migrate_api(source_url)
    tenant = f"api-{uuid.uuid4().hex[:8]}"
    token, other = key_for(source_url, tenant), key_for(source_url, f"api-{uuid.uuid4().hex[:8]}")
    with (
        serve(api_settings(stack_env, source_url, bucket, prefix)) as api,
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        empty = client.get("/v1/notify-settings", headers=auth(token))
        assert empty.status_code == 200
        assert empty.json() == {"tenant_id": tenant, "webhook_url": None, "email": None}
        put = client.put("/v1/notify-settings", json={"webhook_url": HOOK}, headers=auth(token))
        assert put.status_code == 200, put.text
        assert client.get("/v1/notify-settings", headers=auth(token)).json()["webhook_url"] == HOOK
        assert client.get("/v1/notify-settings", headers=auth(other)).json()["webhook_url"] is None
        bad = client.put(
            "/v1/notify-settings", json={"webhook_url": "ftp://x.example.com/"}, headers=auth(token)
        )
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "webhook_url"
        bad = client.put("/v1/notify-settings", json={"email": "nope"}, headers=auth(token))
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "email"
        assert client.get("/v1/notify-settings", headers=auth(token)).json()["webhook_url"] == HOOK
        cleared = client.put("/v1/notify-settings", json={}, headers=auth(token))
        assert cleared.json() == {"tenant_id": tenant, "webhook_url": None, "email": None}
        assert client.get("/v1/notify-settings").status_code == 401
        assert "/v1/notify-settings" in client.get("/openapi.json").json()["paths"]


def test_apps_cannot_make_monthly_rows_or_read_tenant_defaults(source_url):
    """origin and export_id are the service's columns: an app row naming them (to dodge the cap or
    point at another folder) is refused, and the tenants' defaults are not the app role's to read."""
    import psycopg

    migrate_api(source_url)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("SET ROLE export_app")
        for column, value in [("origin", "'monthly'"), ("export_id", "'2024-01'")]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(
                    f"INSERT INTO export_requests (tenant_id, resource, {column}) VALUES ('t-003', 'orders', {value})"
                )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM export_tenant_settings")
