"""Internal webhook targets are refused when the request is made, by every door (the API, the notify
settings, `export-pipelines request`, an app's INSERT as the request sensor validates it), with the
send-time rules (the host resolved, every address public), answered naming the field."""

from __future__ import annotations

import dagster as dg
import httpx
import psycopg
import pytest

from export_pipelines.cli.main import main
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, serve
from export_pipelines_tests.support.services import code_location

INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
    "http://10.0.0.5/x",  # private
    "http://127.0.0.1:9/x",  # loopback
    "https://no-such-host.invalid/x",  # does not resolve
]


@pytest.fixture(scope="module")
def api(stack_env, source_url, bucket):
    with serve(api_settings(stack_env, source_url, bucket, "webhook-doors")) as running:
        yield running


@pytest.mark.parametrize("url", INTERNAL)
def test_the_api_and_the_notify_settings_refuse_internal_targets_at_once(api, source_url, url):
    """Fails on the old code: these were accepted (202/200) and refused only at send time."""
    token = key_for(source_url, "t-001")
    created = httpx.post(
        f"{api.url}/v1/exports",
        headers=auth(token),
        json={"resource": "orders", "notify": {"webhook_url": url}},
        timeout=30,
    )
    assert created.status_code == 422, created.text
    assert created.json()["error"]["field"] == "notify.webhook_url"
    assert "public internet addresses" in created.json()["error"]["message"]
    settings = httpx.put(
        f"{api.url}/v1/notify-settings", headers=auth(token), json={"webhook_url": url}, timeout=30
    )
    assert settings.status_code == 422 and settings.json()["error"]["field"] == "webhook_url", settings.text


@pytest.mark.parametrize("url", INTERNAL[:3])
def test_the_cli_refuses_internal_targets(store, url, capsys):
    """Fails on the old code: `export-pipelines request` queued the row."""
    code = main(["request", "--tenant", "t-001", "--resource", "orders", "--webhook-url", url])
    assert code == 2
    assert "webhook_url" in capsys.readouterr().err
    assert store.execute("SELECT count(*) AS n FROM export_requests").fetchone()["n"] == 0


def test_an_apps_insert_with_an_internal_target_is_failed_by_the_sensor_with_the_reason(
    store, source_url, dagster_resources
):
    """Fails on the old code: the sensor launched the row; the webhook failed at send time, unseen."""
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("SET ROLE export_app")
        rid = conn.execute(
            "INSERT INTO export_requests (tenant_id, resource, webhook_url) "
            "VALUES ('t-001', 'orders', 'http://169.254.169.254/x') RETURNING id::text"
        ).fetchone()[0]
    sensor = code_location()["export_request_sensor"]
    with dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources=dagster_resources
    ) as context:
        assert not (sensor(context).run_requests or [])
    row = store.get(rid)
    assert row.status == "failed" and row.error_code == "invalid_request"
    assert row.error.startswith("webhook_url:") and "public internet addresses" in row.error
