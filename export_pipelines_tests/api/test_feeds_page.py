"""The /exports page's feeds in a real browser (Debian's chromium) against the real API and the real
export job: a 422 shown with its field, create a feed, pause and resume it, run it (the job the
request sensor would launch runs the delivery; the page hears it succeed over the event stream and
lists its files), a second run refused while a delivery is active, delete it — the verbs of
`/v1/feeds` and `export-pipelines feeds`; and a feed created to deliver into one of the tenant's
destinations, shown by name."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import dagster as dg
import httpx
import psycopg
import pytest

from export_pipelines.core.engine.change_tracking import install
from export_pipelines.orchestration.resources import ExportSettings
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines_tests.api.test_exports_page import browser, page, sign_in  # noqa: F401 (fixtures)
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve
from export_pipelines_tests.support.destinations import TENANT_S3_CREDENTIALS, s3_config, tenant_bucket
from export_pipelines_tests.support.services import run_export_job

TENANT = "t-011"
PREFIX = f"feedpage-{uuid.uuid4().hex[:8]}"  # the API finds the files where the job wrote them


@pytest.fixture(scope="module")
def api(stack_env, source_url, s3_client, bucket, catalog):
    migrate_api(source_url)
    install(source_url, catalog.resource("orders"))
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DELETE FROM export_feeds WHERE tenant_id = %s", [TENANT])
        conn.execute("DELETE FROM export_requests WHERE tenant_id = %s", [TENANT])
    tenant_bucket(stack_env, s3_client)
    settings = dataclasses.replace(
        api_settings(stack_env, source_url, bucket, PREFIX), destinations_allow_private=True
    )
    with serve(settings) as running:
        yield running


def feed_row(on: Any, feed_id: str) -> Any:
    return on.locator(f'#feed-rows tr[data-id="{feed_id}"]')


def test_create_pause_run_and_delete_a_feed(api, page, source_url, bucket, dagster_resources):  # noqa: F811
    sign_in(page, api.url, key_for(source_url, TENANT))
    page.wait_for_selector("#feeds-empty", state="visible")  # the feeds are loaded after sign-in
    assert page.eval_on_selector_all("#feed-resource option", "os => os.map(o => o.value)") == ["orders"]

    # The API's 422 names the field: shown, and the input that holds it marked.
    page.select_option("#feed-format", "csv")
    page.fill("#feed-webhook", "ftp://example.com/hooks")
    page.click("#feed-submit")
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error-text")
    assert message.startswith("webhook_url:") and "http" in message, message
    assert page.get_attribute("#feed-webhook", "aria-invalid") == "true"
    assert page.locator("#feed-rows tr").count() == 0
    page.errors.clear()  # the browser logged the 422: expected

    page.fill("#feed-webhook", "")
    page.select_option("#feed-frequency", "hourly")
    page.select_option("#feed-mode", "incremental")
    page.click("#feed-submit")
    page.wait_for_selector("#feed-rows tr[data-state=active]")
    assert page.is_hidden("#error") and page.get_attribute("#feed-webhook", "aria-invalid") is None
    feed_id = page.get_attribute("#feed-rows tr", "data-id")
    row = feed_row(page, feed_id)
    text = row.inner_text()
    assert "orders" in text and "hourly" in text and "incremental" in text and "none yet" in text
    assert "links to download" in text  # no destination_id: links
    with psycopg.connect(source_url) as conn:
        stored = conn.execute(
            "SELECT frequency, mode, next_due_at IS NOT NULL FROM export_feeds WHERE id = %s", [feed_id]
        ).fetchone()
    assert stored == ("hourly", "incremental", True)

    # Pause (PATCH frequency manual: never due), then resume on another schedule.
    row.locator("button.pause").click()
    page.wait_for_selector(f'#feed-rows tr[data-id="{feed_id}"][data-state=paused]')
    assert "—" in feed_row(page, feed_id).locator("td.when").inner_text()  # no next due
    assert feed_row(page, feed_id).locator("select.resume-frequency").input_value() == "hourly"
    feed_row(page, feed_id).locator("select.resume-frequency").select_option("weekly")
    feed_row(page, feed_id).locator("button.resume").click()
    page.wait_for_selector(f'#feed-rows tr[data-id="{feed_id}"][data-state=active]')
    assert "weekly" in feed_row(page, feed_id).locator("td.frequency").inner_text()

    # Run now: the delivery appears pending (in the feed's row and in the exports table); the job
    # runs it, and the page hears it succeed over the event stream.
    feed_row(page, feed_id).locator("button.run").click()
    page.wait_for_selector(f'#feed-rows tr[data-id="{feed_id}"][data-last-status=pending]')
    assert feed_row(page, feed_id).locator(".sequence").inner_text() == "#1"
    with psycopg.connect(source_url) as conn:
        (delivery_id,) = conn.execute(
            "SELECT id::text FROM export_requests WHERE feed_id = %s AND sequence = 1", [feed_id]
        ).fetchone()
    page.wait_for_selector(f'#export-rows tr[data-id="{delivery_id}"]')

    # A second run while the first is active: 409, shown.
    feed_row(page, feed_id).locator("button.full-refresh").click()
    page.wait_for_selector("#error:not([hidden])")
    assert "delivery" in page.inner_text("#error-text")
    # The full refresh stays asked for: the feed's next delivery is full.
    page.wait_for_selector(f'#feed-rows tr[data-id="{feed_id}"] .feed-state:has-text("full refresh pending")')
    page.errors.clear()  # the 409: expected
    page.click("#error-close")

    result = run_export_job(
        run_config=export_run_config(tenant_id=TENANT, resource="orders", request_id=delivery_id),
        resources={**dagster_resources, "export_settings": ExportSettings(bucket=bucket, prefix=PREFIX)},
        raise_on_error=False,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    page.wait_for_selector(f'#feed-rows tr[data-id="{feed_id}"][data-last-status=succeeded]', timeout=60_000)
    last = feed_row(page, feed_id).locator("td.last-delivery")
    assert "succeeded" in last.inner_text()
    last.locator("button.show-files").click()
    page.wait_for_selector(f'#feed-rows tr[data-id="{feed_id}"] td.last-delivery button.download')
    assert (
        page.locator(f'#export-rows tr[data-id="{delivery_id}"]').get_attribute("data-status") == "succeeded"
    )
    page.screenshot(path="/tmp/page_feeds.png", full_page=True)

    # The state survives a reload: the list and each feed's newest delivery come from the API.
    page.reload()
    page.wait_for_selector(f'#feed-rows tr[data-id="{feed_id}"][data-last-status=succeeded]')

    feed_row(page, feed_id).locator("button.delete").click()
    page.wait_for_selector(f'#feed-rows tr[data-id="{feed_id}"]', state="detached")
    assert page.is_visible("#feeds-empty")
    with psycopg.connect(source_url) as conn:
        assert conn.execute("SELECT count(*) FROM export_feeds WHERE id = %s", [feed_id]).fetchone() == (0,)
    assert not page.errors, page.errors


def test_a_feed_into_a_destination_shows_it_by_name(api, page, source_url, stack_env):  # noqa: F811
    token = key_for(source_url, TENANT)
    name = f"lake-{uuid.uuid4().hex[:6]}"
    made = httpx.post(
        f"{api.url}/v1/destinations",
        headers=auth(token),
        json={
            "kind": "s3",
            "name": name,
            "config": s3_config(stack_env, "feeds-from-page"),
            "credentials": TENANT_S3_CREDENTIALS,
        },
        timeout=30,
    )
    assert made.status_code == 201, made.text
    destination_id = made.json()["id"]
    sign_in(page, api.url, token)
    page.wait_for_selector(f'#feed-destination option[value="{destination_id}"]', state="attached")
    page.select_option("#feed-destination", destination_id)
    page.select_option("#feed-frequency", "manual")
    page.click("#feed-submit")
    row = page.wait_for_selector(f"#feed-rows tr:has-text('{name}')")
    feed_id = row.get_attribute("data-id")
    assert row.get_attribute("data-state") == "paused"  # manual: runs only when run
    with psycopg.connect(source_url) as conn:
        stored = conn.execute(
            "SELECT destination_id::text FROM export_feeds WHERE id = %s", [feed_id]
        ).fetchone()
    assert stored == (destination_id,)
    row.query_selector("button.delete").click()
    page.wait_for_selector(f'#feed-rows tr[data-id="{feed_id}"]', state="detached")
    assert (
        httpx.delete(
            f"{api.url}/v1/destinations/{destination_id}", headers=auth(token), timeout=30
        ).status_code
        == 204
    )
    assert not page.errors, page.errors
