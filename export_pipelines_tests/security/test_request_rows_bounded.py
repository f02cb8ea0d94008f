"""Request rows a hostile app or client cannot make costly: every text column bounded by the database,
rows for tenants the tenants table does not list refused at insert (every door), and a fair queue
that a flood of stale or made-up rows cannot jump."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest

from export_pipelines.core.errors import InvalidRequest
from export_pipelines.core.requests.queue import RequestQueue
from export_pipelines.core.storage.migrations.request_table import UNKNOWN_TENANT_SQLSTATE, set_tenant_source
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, serve

BIG = "x" * 200_000


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("resource", BIG),
        ("format", BIG),
        ("compression", BIG),
        ("columns", "{" + BIG + "}"),
        ("columns", "{" + ",".join(["y" * 100] * 900) + "}"),
    ],
)
def test_an_app_cannot_insert_an_oversized_text_column(store, source_url, column, value):
    """Fails on the old schema: only filters (and the notify targets) were bounded; three 200 MB rows
    made one sensor tick take 8.3 s and 1.5 GB."""
    defaults = {
        "tenant_id": "t-001",
        "resource": "orders",
        "format": "csv",
        "compression": None,
        "columns": None,
    }
    row = {**defaults, column: value}
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("SET ROLE export_app")
        with pytest.raises(psycopg.errors.CheckViolation, match="export_requests_text_check"):
            conn.execute(
                "INSERT INTO export_requests (tenant_id, resource, format, compression, columns) "
                "VALUES (%(tenant_id)s, %(resource)s, %(format)s, %(compression)s, %(columns)s)",
                row,
            )
    assert RequestQueue.on(store.conn).to_launch(limit=1000) == []


@pytest.fixture
def tenants_checked(store):
    """The catalog's tenants table recorded, as `export-pipelines migrate` does; cleared after."""
    set_tenant_source(store.conn, ("public", "tenants", "id"))
    yield
    set_tenant_source(store.conn, None)


def test_rows_for_unknown_tenants_are_refused_at_insert_by_every_door(
    tenants_checked, store, source_url, stack_env, bucket
):
    """Fails on the old schema: the app role inserted rows for made-up tenants, which escaped the
    per-tenant cap and took the first turns of the fair queue."""
    made_up = f"made-up-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("SET ROLE export_app")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("INSERT INTO export_requests (tenant_id, resource) VALUES (%s, 'orders')", [made_up])
        assert refused.value.sqlstate == UNKNOWN_TENANT_SQLSTATE
        assert "is not a tenant" in str(refused.value)
        # A listed tenant is accepted as before.
        conn.execute("INSERT INTO export_requests (tenant_id, resource) VALUES ('t-001', 'orders')")
    # The request store (the API's and the CLI's door) answers the field.
    with pytest.raises(InvalidRequest) as invalid:
        store.create(tenant_id=made_up, resource="orders")
    assert invalid.value.field == "tenant_id"
    # The API: an operator key acting for a made-up tenant is answered 422 naming tenant_id.
    operator = key_for(source_url, None, operator=True)
    with serve(api_settings(stack_env, source_url, bucket, "unknown-tenants")) as api:
        answer = httpx.post(
            f"{api.url}/v1/exports",
            headers=auth(operator),
            json={"resource": "orders", "tenant_id": made_up},
            timeout=30,
        )
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "tenant_id", answer.text
    assert [r.tenant_id for r in RequestQueue.on(store.conn).to_launch(limit=1000)] == ["t-001"]


def test_stale_and_made_up_rows_cannot_jump_the_fair_queue(store, catalog):
    """Fails on the old queue: re-requests of stale queued rows ranked ahead of new pending rows, rows
    of made-up tenants took the first turns, and the submitter filtered to pending rows after the
    50-row limit (120 tenants waiting: it claimed none)."""
    # 60 made-up tenants' rows and 60 stale queued rows, all older than the real requests.
    store.execute(
        "INSERT INTO export_requests (tenant_id, resource, created_at) "
        "SELECT 'fake-' || g, 'orders', now() - interval '1 hour' FROM generate_series(1, 60) g"
    )
    store.execute(
        "INSERT INTO export_requests (tenant_id, resource, status, queued_at, created_at) "
        "SELECT 'stale-' || g, 'orders', 'queued', now() - interval '10 minutes', now() - interval '2 hours' "
        "FROM generate_series(1, 60) g"
    )
    real = [store.create(tenant_id=t, resource="orders") for t in ("t-001", "t-002", "t-003")]
    queue = RequestQueue.on(store.conn)
    # The submitter's read: pending rows only, filtered before the limit, listed tenants first.
    first = queue.to_launch(limit=50, pending_only=True, tenants=catalog.tenants)
    assert [r.id for r in first[:3]] == real
    assert all(r.status == "pending" for r in first)
    # The sensor's read: pending rows before re-requests of stale queued ones.
    sensor = queue.to_launch(limit=50, tenants=catalog.tenants)
    assert [r.id for r in sensor[:3]] == real
    assert "queued" not in [r.status for r in sensor]  # 3 real, then made-up pending rows fill the batch
