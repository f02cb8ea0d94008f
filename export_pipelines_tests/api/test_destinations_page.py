"""The /exports page's destinations in a real browser (Debian's chromium) against the real API, the
second SeaweedFS identity standing in for the tenant's S3: add one (its secret leaves the page once
stored, the list shows a fingerprint), test it, name it in a request, delete it — the verbs of
`export-pipelines destinations`."""

from __future__ import annotations

import dataclasses
import json
import uuid

import psycopg
import pytest

from export_pipelines_tests.api.test_exports_page import browser, page, sign_in  # noqa: F401 (fixtures)
from export_pipelines_tests.support.api_helpers import api_settings, key_for, migrate_api, serve
from export_pipelines_tests.support.destinations import TENANT_S3_CREDENTIALS, s3_config, tenant_bucket

TENANT = "t-008"


@pytest.fixture(scope="module")
def api(stack_env, source_url, s3_client, bucket):
    migrate_api(source_url)
    tenant_bucket(stack_env, s3_client)
    settings = dataclasses.replace(
        api_settings(stack_env, source_url, bucket, f"page-{uuid.uuid4().hex[:8]}"),
        destinations_allow_private=True,
    )
    with serve(settings) as running:
        yield running


def test_add_test_choose_and_delete_a_destination(api, page, source_url, stack_env):  # noqa: F811
    sign_in(page, api.url, key_for(source_url, TENANT))
    name = f"lake-{uuid.uuid4().hex[:6]}"
    secret = TENANT_S3_CREDENTIALS["secret_access_key"]
    page.select_option("#destination-kind", "s3")
    page.fill("#destination-name", name)
    page.fill("#destination-config", json.dumps(s3_config(stack_env, "from-page")))
    page.fill("#destination-credentials", json.dumps(TENANT_S3_CREDENTIALS))
    page.click("#destination-submit")
    row = page.wait_for_selector(f"#destination-rows tr:has-text('{name}')")
    assert "secret_access_key=set" in row.inner_text() and secret not in page.content()
    assert page.input_value("#destination-credentials") == ""  # write-only: gone from the page

    row.query_selector("button:has-text('Test')").click()
    page.wait_for_function(
        "name => [...document.querySelectorAll('#destination-rows tr')].some("
        "r => r.textContent.includes(name) && r.querySelector('.test-result').textContent.startsWith('ok'))",
        arg=name,
    )

    destination_id = row.get_attribute("data-id")
    page.select_option("#destination", destination_id)
    page.select_option("#format", "csv")
    page.click("#request-submit")
    page.wait_for_selector("#export-rows tr")
    with psycopg.connect(source_url) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM export_requests WHERE tenant_id = %s AND destination_id::text = %s",
            [TENANT, destination_id],
        ).fetchone()
    assert stored == (1,)

    row.query_selector("button:has-text('Delete')").click()
    page.wait_for_function(
        "name => ![...document.querySelectorAll('#destination-rows tr')].some(r => r.textContent.includes(name))",
        arg=name,
    )
    assert destination_id not in [
        o.get_attribute("value") for o in page.query_selector_all("#destination option")
    ]
    assert not [e for e in page.errors if "destinations" in e]
