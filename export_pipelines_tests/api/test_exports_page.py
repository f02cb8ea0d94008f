"""The /exports web page in a real headless browser, against the real service
(uvicorn), PostgreSQL, S3 server, request sensor and export job:

sign in with a key → request an export through the form → the sensor and the real job run it →
the progress bar, fed by the SSE endpoint, moves → click download → the file's rows equal
PostgreSQL's. Screenshots go to /tmp/page_*.png.

The browser is Debian's chromium (scripts/test_tools.sh installs it) driven by playwright from
PyPI; `playwright install` is never used. Without chromium the browser tests skip, except on CI
(CI=true), where that is a failure.

Also here, without a browser: the event-stream token that lets EventSource (which cannot send
Authorization) open a stream is short-lived, tenant-scoped and good for one export only.
"""

from __future__ import annotations

import csv
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg
import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from export_pipelines.api import stream_tokens
from export_pipelines.core.requests.api_keys import ApiKeyStore
from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines.orchestration.resources import ExportS3, ExportSettings
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve
from export_pipelines_tests.support.s3_fault_proxy import S3FaultProxy, delay, op
from export_pipelines_tests.support.services import code_location, run_export_job

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BIG = "t-big"  # 120,000 rows: an uncompressed CSV of several 5 MiB parts, so progress has steps
DATE_FROM, DATE_TO = "2024-02-01", "2025-12-01"
LEFT_OUT = "customer_email"  # a column the form leaves unchecked
PART_DELAY_SECONDS = 1.5  # each UploadPart waits this long in the proxy: the bar moves in steps


def _unavailable(reason: str) -> None:
    # CI must run the browser test: a missing browser there is a broken set-up, not a skip.
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: run scripts/test_tools.sh and install the dev extra)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} not found: scripts/test_tools.sh installs Debian's chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def db(source_url) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(source_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture(scope="module")
def proxy(stack_env) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as p:
        yield p


@pytest.fixture(scope="module")
def page_prefix() -> str:
    return f"page-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def api(stack_env, source_url, s3_client, bucket, page_prefix):
    migrate_api(source_url)
    # The API presigns against the real S3 endpoint: the browser downloads from it directly.
    with serve(api_settings(stack_env, source_url, bucket, page_prefix)) as running:
        yield running


@pytest.fixture
def page(browser) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 720})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.errors = errors
    try:
        yield page
    finally:
        context.close()


def sign_in(page: Any, url: str, token: str) -> None:
    page.goto(f"{url}/exports")
    page.fill("#api-key", token)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")


def width_of(page: Any, export_id: str) -> str:
    return page.eval_on_selector(f'tr[data-id="{export_id}"] .fill', "e => e.style.width")


def test_page_request_progress_download_rows_equal_postgresql(
    api, page, db, proxy, source_url, stack_env, s3_client, bucket, page_prefix, dagster_resources, pg
):
    # The page's rows are this tenant's newest; nothing else of the tenant waits in the queue
    # (the per-tenant cap and the fair queue would otherwise decide what the sensor starts).
    db.execute(
        "UPDATE export_requests SET status = 'canceled', completed_at = now(), updated_at = now() "
        "WHERE status IN ('pending', 'queued', 'running')"
    )
    token = key_for(source_url, BIG, name="page test")

    # A wrong key is refused with the API's message, and the key is not kept.
    page.goto(f"{api.url}/exports")
    page.fill("#api-key", "exp_not-a-key")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert "unknown or revoked" in page.inner_text("#error-text")
    assert page.evaluate("sessionStorage.length") == 0

    sign_in(page, api.url, token)
    assert page.evaluate("Object.keys(sessionStorage)") == ["export_pipelines.api_key"]
    assert page.eval_on_selector_all("#resource option", "os => os.map(o => o.value)") == ["orders"]

    # A bad request shows the API's error.message, which names the field.
    page.select_option("#format", "csv")
    page.fill("#date-from", "2025-01-01")
    page.fill("#date-to", "2024-01-01")
    page.click("#request-submit")
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error-text")
    assert message.startswith("filters.date_to:") and "after date_from" in message, message
    page.screenshot(path="/tmp/page_error.png", full_page=True)
    page.errors.clear()  # the browser logged the 401 and the 422 above: expected

    # The real request: orders, CSV without compression (several parts), a date range, a column
    # left out.
    page.fill("#date-from", DATE_FROM)
    page.fill("#date-to", DATE_TO)
    page.select_option("#compression", "none")
    page.uncheck(f'#column-list input[value="{LEFT_OUT}"]')
    page.click("#request-submit")
    page.wait_for_selector("#error", state="hidden")
    page.wait_for_selector("#export-rows tr[data-status=pending]")
    export_id = page.get_attribute("#export-rows tr:first-child", "data-id")
    row = db.execute("SELECT * FROM export_requests WHERE id = %s", [export_id]).fetchone()
    assert row["tenant_id"] == BIG and row["compression"] == "none"
    assert LEFT_OUT not in row["columns"] and row["filters"] == {"date_from": DATE_FROM, "date_to": DATE_TO}

    # The request sensor turns the row into a run; the real job runs it, its S3 traffic through a
    # proxy that slows each part, one part in flight, so progress arrives part by part.
    proxy.add_fault(op("UploadPart"), delay(PART_DELAY_SECONDS), times=None)
    resources = {
        **dagster_resources,
        "s3": ExportS3(
            endpoint_url=proxy.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        ),
        "export_settings": ExportSettings(
            bucket=bucket, prefix=page_prefix, part_size_mib=5, max_parts_in_flight=1
        ),
    }
    instance = dg.DagsterInstance.ephemeral()
    sensor = code_location()["export_request_sensor"]
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        requests = sensor(context).run_requests or []
    (run_request,) = [r for r in requests if r.run_key == f"{export_id}:1"]
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = run_export_job(
                run_config=run_request.run_config,
                tags=run_request.tags,
                resources=resources,
                instance=instance,
                raise_on_error=False,
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()

    # Watch the bar: its width as the page shows it, sampled while the job runs.
    widths: list[str] = []
    shot = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = page.get_attribute(f'tr[data-id="{export_id}"]', "data-status")
        width = width_of(page, export_id)
        if not widths or widths[-1] != width:
            widths.append(width)
        if status == "running" and not shot and 0 < float(width.rstrip("%") or 0) < 100:
            page.wait_for_timeout(500)  # the bar's width transition (0.4 s) has ended
            page.screenshot(path="/tmp/page_running.png", full_page=True)
            shot = True
        if status in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.1)
    runner.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].success
    assert page.get_attribute(f'tr[data-id="{export_id}"]', "data-status") == "succeeded"
    moving = [w for w in dict.fromkeys(widths) if w not in ("", "0%", "100%")]
    assert len(moving) >= 2, widths  # at least two distinct in-between widths: it moved
    assert shot, widths
    assert width_of(page, export_id) == "100%"

    # The final SSE event carries the files: one button each. Download the files through the page.
    page.wait_for_selector(f'tr[data-id="{export_id}"] button.download')
    buttons = page.query_selector_all(f'tr[data-id="{export_id}"] button.download')
    page.wait_for_timeout(600)  # the bar's width transition (0.4 s) has ended
    page.screenshot(path="/tmp/page_finished.png", full_page=True)
    downloaded: list[list[str]] = []
    for button in buttons:
        with page.expect_download() as info:
            button.click()
        download = info.value
        assert download.failure() is None
        # The name finalize gives (Content-Disposition of the presigned link).
        assert download.suggested_filename.startswith(f"orders-{BIG}-{export_id}-"), (
            download.suggested_filename
        )
        assert download.suggested_filename.endswith(".csv"), download.suggested_filename
        with open(download.path(), newline="", encoding="utf-8") as f:
            downloaded.append(list(csv.reader(f)))
    header = downloaded[0][0]
    assert LEFT_OUT not in header and header[:2] == ["id", "tenant_id"], header
    rows = [r for d in downloaded for r in d[1:]]
    got = sorted(
        (int(r[header.index("id")]), r[header.index("status")], r[header.index("amount")]) for r in rows
    )
    expected = pg.execute(
        "SELECT id, status, coalesce(amount::text, '') FROM orders WHERE tenant_id = %s "
        "AND created_at >= %s::timestamptz AND created_at < %s::timestamptz ORDER BY id",
        [BIG, f"{DATE_FROM}T00:00:00Z", f"{DATE_TO}T00:00:00Z"],
    ).fetchall()
    assert len(got) == len(expected) > 10_000
    assert got == [tuple(e) for e in expected]
    assert open_uploads(s3_client, bucket, page_prefix) == []
    assert len(proxy.entries("UploadPart")) >= 3  # several parts: the bar had steps to show
    assert page.errors == [], page.errors


def test_more_pages_through_next_cursor_and_sign_out_forgets_the_key(api, page, db, source_url):
    tenant = f"page-{uuid.uuid4().hex[:8]}"
    token = key_for(source_url, tenant)
    ids = []
    for _ in range(13):
        got = httpx.post(
            f"{api.url}/v1/exports", json={"resource": "orders", "format": "jsonl"}, headers=auth(token)
        )
        assert got.status_code == 202, got.text
        ids.append(got.json()["id"])
        # Only the newest few stay active (the per-tenant cap), the rest finish as failed.
        db.execute(
            "UPDATE export_requests SET status = 'failed', error = 'x', completed_at = now() "
            "WHERE tenant_id = %s AND id <> %s AND status = 'pending'",
            [tenant, ids[-1]],
        )
    sign_in(page, api.url, token)
    page.wait_for_selector("#more:not([hidden])")
    first = page.eval_on_selector_all("#export-rows tr", "trs => trs.map(t => t.dataset.id)")
    page.click("#more")
    page.wait_for_selector("#more", state="hidden")
    every = page.eval_on_selector_all("#export-rows tr", "trs => trs.map(t => t.dataset.id)")
    assert first == list(reversed(ids))[:10] and every == list(reversed(ids))
    page.click("#sign-out")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.errors == [], page.errors


def test_events_token_is_short_lived_and_scoped_to_one_export(api, source_url, db):
    tenant, other = f"page-{uuid.uuid4().hex[:8]}", f"page-{uuid.uuid4().hex[:8]}"
    key, other_key = key_for(source_url, tenant), key_for(source_url, other)
    with httpx.Client(base_url=api.url, timeout=30) as client:

        def create(token: str) -> str:
            got = client.post("/v1/exports", json={"resource": "orders"}, headers=auth(token))
            assert got.status_code == 202, got.text
            return got.json()["id"]

        mine, mine_too, theirs = create(key), create(key), create(other_key)
        got = client.post(f"/v1/exports/{mine}/events/token", headers=auth(key))
        assert got.status_code == 201, got.text
        body = got.json()
        assert body["url"] == f"/v1/exports/{mine}/events?access_token={body['token']}"
        assert got.headers["cache-control"] == "no-store"

        # The token opens this export's stream, without Authorization.
        with client.stream("GET", body["url"]) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            first = next(stream.iter_lines())
            assert first.startswith("id: ")
        # ...and nothing else: another export of the same tenant, another tenant's, other routes.
        for other_id in (mine_too, theirs):
            refused = client.get(f"/v1/exports/{other_id}/events", params={"access_token": body["token"]})
            assert refused.status_code == 404, refused.text
        assert client.get(f"/v1/exports/{mine}", params={"access_token": body["token"]}).status_code == 401
        # Another tenant cannot even get a token for my export (404, not 403).
        assert client.post(f"/v1/exports/{mine}/events/token", headers=auth(other_key)).status_code == 404

        # The API key itself is not accepted in the URL; a forged, tampered or expired token neither.
        def refused_with(access_token: str) -> dict[str, Any]:
            got = client.get(f"/v1/exports/{mine}/events", params={"access_token": access_token})
            assert got.status_code == 401, got.text
            return got.json()["error"]

        assert refused_with(key)["field"] == "access_token"
        payload, _, signature = body["token"].partition(".")
        assert "not valid" in refused_with(f"{payload}.{'0' * len(signature)}")["message"]
        assert "not an event-stream token" in refused_with("est_%%%")["message"]
        principal = _principal_of(source_url, key)
        secret = api.server.config.app.state.api.token_secret  # the server's own signing key
        old, _ = stream_tokens.mint(
            principal, mine, secret, now=time.time() - stream_tokens.TOKEN_SECONDS - 5
        )
        assert "expired" in refused_with(old)["message"]
        # A tenant claim the key does not have is refused even when the signature is right.
        forged, _ = stream_tokens.mint(_as_tenant(principal, other), mine, secret)
        assert "wrong tenant" in refused_with(forged)["message"]

        # Revoking the key voids its tokens at once.
        with ApiKeyStore(source_url) as keys:
            assert keys.revoke(key[:12]) == 1
        assert "revoked" in refused_with(body["token"])["message"]


class _Principal:
    """Just what stream_tokens.mint reads of a principal."""

    def __init__(self, token: str, key: Any, tenant_id: str | None) -> None:
        self.token, self.key, self.tenant_id = token, key, tenant_id


def _principal_of(source_url: str, token: str) -> Any:
    with ApiKeyStore(source_url) as keys:
        key = keys.authenticate(token)
    assert key is not None
    return _Principal(token, key, key.tenant_id)


def _as_tenant(principal: Any, tenant: str) -> Any:
    return _Principal(principal.token, principal.key, tenant)
