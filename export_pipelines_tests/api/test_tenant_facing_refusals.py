"""What a tenant is told when a request is refused, through the real API server: what the tenant can do,
never a server variable's name; a PDF over its row cap is refused when it is requested (422), not
seconds later in its run; and `export-pipelines api-key create` refuses a tenant that does not exist."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve

EXE = Path(sys.executable).parent / "export-pipelines"
SMALL, BIG = "t-002", "t-big"


def orders_of(source_url: str, tenant: str) -> int:
    with psycopg.connect(source_url) as conn:
        row = conn.execute("SELECT count(*) FROM orders WHERE tenant_id = %s", [tenant]).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(scope="module")
def pdf_cap(source_url) -> int:
    """The cap: exactly the small tenant's rows (allowed), far below the big tenant's."""
    cap = orders_of(source_url, SMALL)
    assert orders_of(source_url, BIG) > cap > 0
    return cap


@pytest.fixture(scope="module")
def api(stack_env, source_url, bucket, pdf_cap):
    migrate_api(source_url)
    settings = api_settings(
        stack_env, source_url, bucket, f"refusals-{uuid.uuid4().hex[:8]}", EXPORT_PDF_MAX_ROWS=str(pdf_cap)
    )
    with serve(settings) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        yield client


def rows_of(source_url: str, tenant: str) -> int:
    with psycopg.connect(source_url) as conn:
        row = conn.execute("SELECT count(*) FROM export_requests WHERE tenant_id = %s", [tenant]).fetchone()
    assert row is not None
    return int(row[0])


def test_a_pdf_over_the_cap_is_refused_when_requested(api, source_url, pdf_cap):
    token = key_for(source_url, None, operator=True, name="refusals")
    before = rows_of(source_url, BIG)
    over = api.post(
        "/v1/exports", json={"tenant_id": BIG, "resource": "orders", "format": "pdf"}, headers=auth(token)
    )
    assert over.status_code == 422, over.text
    error = over.json()["error"]
    assert error["field"] == "format"
    assert f"a PDF holds at most {pdf_cap:,} rows" in error["message"]
    assert "use csv or xlsx, or narrow the filters" in error["message"]
    assert "EXPORT_" not in error["message"]
    assert rows_of(source_url, BIG) == before  # nothing queued
    # At the cap: accepted (and canceled again, so the tenant's cap stays free).
    at_cap = api.post(
        "/v1/exports", json={"tenant_id": SMALL, "resource": "orders", "format": "pdf"}, headers=auth(token)
    )
    assert at_cap.status_code == 202, at_cap.text
    api.post(f"/v1/exports/{at_cap.json()['id']}/cancel", headers=auth(token), params={"tenant_id": SMALL})
    # The same big tenant in a machine format is not a PDF's business.
    csv = api.post(
        "/v1/exports", json={"tenant_id": BIG, "resource": "orders", "format": "csv"}, headers=auth(token)
    )
    assert csv.status_code == 202, csv.text
    api.post(f"/v1/exports/{csv.json()['id']}/cancel", headers=auth(token), params={"tenant_id": BIG})


def test_over_the_active_cap_the_tenant_is_told_to_retry(api, source_url):
    tenant = f"refuse-{uuid.uuid4().hex[:8]}"
    token = key_for(source_url, tenant)
    with psycopg.connect(source_url) as conn:
        row = conn.execute("SELECT value FROM export_limits WHERE name = 'tenant_max_active'").fetchone()
    assert row is not None
    cap = int(row[0])
    for _ in range(cap):
        assert api.post("/v1/exports", json={"resource": "orders"}, headers=auth(token)).status_code == 202
    over = api.post("/v1/exports", json={"resource": "orders"}, headers=auth(token))
    assert over.status_code == 429, over.text
    message = over.json()["error"]["message"]
    assert f"at most {cap} exports may be active" in message and "retry after one finishes" in message
    assert "EXPORT_" not in message


def test_api_key_create_refuses_an_unknown_tenant(source_url):
    env = {**os.environ, "SOURCE_DATABASE_URL": source_url}
    unknown = f"t-nope-{uuid.uuid4().hex[:8]}"  # "t-nope" itself may hold a key from before the check
    nope = subprocess.run(
        [str(EXE), "api-key", "create", "--tenant", unknown],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert nope.returncode == 2, nope.stdout + nope.stderr
    assert nope.stdout == ""  # no token printed
    assert f"'{unknown}' is not a tenant" in nope.stderr
    with psycopg.connect(source_url) as conn:
        row = conn.execute("SELECT count(*) FROM export_api_keys WHERE tenant_id = %s", [unknown]).fetchone()
    assert row is not None and row[0] == 0
    known = subprocess.run(
        [str(EXE), "api-key", "create", "--tenant", SMALL, "--name", "refusals"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert known.returncode == 0, known.stderr
    assert known.stdout.startswith("exp_")


def test_export_pipelines_request_refuses_a_pdf_over_the_cap(source_url, pdf_cap):
    env = {**os.environ, "SOURCE_DATABASE_URL": source_url, "EXPORT_PDF_MAX_ROWS": str(pdf_cap)}
    before = rows_of(source_url, BIG)
    over = subprocess.run(
        [str(EXE), "request", "--tenant", BIG, "--resource", "orders", "--format", "pdf"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert over.returncode == 2, over.stdout + over.stderr
    assert f"format: a PDF holds at most {pdf_cap:,} rows" in over.stderr and "EXPORT_" not in over.stderr
    assert over.stdout == "" and rows_of(source_url, BIG) == before
