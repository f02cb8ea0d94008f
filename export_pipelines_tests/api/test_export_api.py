"""The export API against the real service (uvicorn), PostgreSQL and S3 server (docs/api.md)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import threading
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from export_pipelines.core.errors import ExportError
from export_pipelines.core.requests.catalog import load_catalog
from export_pipelines.core.requests.request_row import check_request_fields
from export_pipelines_tests.support.api_helpers import (
    api_settings,
    auth,
    complete_export,
    key_for,
    migrate_api,
    serve,
)

SMALL = "t-002"


@pytest.fixture(scope="module")
def api(stack_env, source_url, s3_client, bucket):
    migrate_api(source_url)
    prefix = f"api-{uuid.uuid4().hex[:8]}"
    with serve(api_settings(stack_env, source_url, bucket, prefix)) as running:
        yield running


@pytest.fixture
def client(api):
    with httpx.Client(base_url=api.url, timeout=30) as c:
        yield c


@pytest.fixture
def db(source_url):
    with psycopg.connect(source_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def fresh_tenant() -> str:
    """A tenant of its own per test, so the per-tenant cap never sees another test's rows."""
    return f"api-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def tenant_key(source_url):
    tenant = fresh_tenant()
    return tenant, key_for(source_url, tenant)


def post(client: httpx.Client, token: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post("/v1/exports", json=body, headers={**auth(token), **headers})


def test_health_and_readiness(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "s3": "ok"}
    assert client.get("/openapi.json").json()["paths"]["/v1/exports"]["post"]
    assert client.get("/docs").status_code == 200


def test_a_created_export_is_announced_to_the_submitter_once_visible(client, tenant_key, source_url):
    """The submitter LISTENs for new pending rows: a create through the API is announced within a
    moment, and by then the row is committed (the submitter claims what it can read). The API sends
    the notice after its commit, not from the insert's own transaction."""
    from export_pipelines.core.storage.migrations.request_table import PENDING_CHANNEL

    with psycopg.connect(source_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {PENDING_CHANNEL}")
        created = post(client, tenant_key[1], {"resource": "orders"})
        assert created.status_code == 202, created.text
        heard = next(listener.notifies(timeout=5, stop_after=1), None)
        assert heard is not None, "no notice within 5 s of the create"
        with psycopg.connect(source_url, autocommit=True) as reader:
            status = reader.execute(
                "SELECT status FROM export_requests WHERE id = %s", [created.json()["id"]]
            ).fetchone()
        assert status == ("pending",)


def test_authentication(client, source_url):
    assert client.get("/v1/exports").status_code == 401
    no_key = client.get("/v1/exports", headers={"Authorization": "Bearer exp_nope"})
    assert no_key.status_code == 401
    assert no_key.headers["WWW-Authenticate"] == "Bearer"
    assert no_key.json()["error"]["code"] == "unauthenticated"
    assert client.get("/v1/exports", headers={"Authorization": "Basic abc"}).status_code == 401

    from export_pipelines.core.requests.api_keys import ApiKeyStore, hash_token

    tenant = fresh_tenant()
    with ApiKeyStore(source_url) as keys:
        token, key = keys.create(tenant, "app")
        assert client.get("/v1/exports", headers=auth(token)).status_code == 200
        # Only the hash and a short prefix are stored.
        row = keys.execute("SELECT * FROM export_api_keys WHERE id = %s", [key.id]).fetchone()
        assert row["key_hash"] == hash_token(token) and token not in json.dumps(row, default=str)
        assert row["last_used_at"] is not None
        assert keys.revoke(key.key_prefix) == 1
    assert client.get("/v1/exports", headers=auth(token)).status_code == 401


def test_a_key_revoked_after_it_created_exports_creates_nothing_more(client, source_url, db):
    """A key the server has just admitted takes the one-call path (its body read first); the key is
    still looked up before the insert, so a revocation in between is answered 401 and writes no row."""
    from export_pipelines.core.requests.api_keys import ApiKeyStore

    tenant = fresh_tenant()
    body = {"resource": "orders", "format": "csv"}
    with ApiKeyStore(source_url) as keys:
        token, key = keys.create(tenant, "app")
        for _ in range(2):  # the second create is one of a key admitted lately
            assert client.post("/v1/exports", headers=auth(token), json=body).status_code == 202
        assert keys.revoke(key.key_prefix) == 1
    refused = client.post("/v1/exports", headers=auth(token), json=body)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "unauthenticated"
    rows = db.execute("SELECT count(*) AS n FROM export_requests WHERE tenant_id = %s", [tenant]).fetchone()
    assert rows["n"] == 2


def test_create_then_status_etag_and_304(client, tenant_key):
    tenant, token = tenant_key
    body = {
        "resource": "orders",
        "format": "jsonl",
        "filters": {"status": ["paid"], "date_from": "2024-01-01"},
    }
    created = post(client, token, body)
    assert created.status_code == 202, created.text
    doc = created.json()
    assert created.headers["Location"] == f"/v1/exports/{doc['id']}"
    assert doc["status"] == "pending" and doc["tenant_id"] == tenant and doc["format"] == "jsonl"
    assert doc["error"] is None and doc["percent"] is None

    got = client.get(created.headers["Location"], headers=auth(token))
    assert got.status_code == 200
    assert got.json()["queue_position"] is not None and got.json()["queue_position"] >= 0
    etag = got.headers["ETag"]
    again = client.get(created.headers["Location"], headers={**auth(token), "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert (
        client.get(created.headers["Location"], headers={**auth(token), "If-None-Match": '"x"'}).status_code
        == 200
    )
    assert client.get("/v1/exports/not-a-uuid", headers=auth(token)).status_code == 404
    assert (
        client.get(f"/v1/exports/{uuid.uuid4()}", headers=auth(token)).json()["error"]["code"] == "not_found"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"resource": "nope"}, "resource"),
        ({"resource": "orders", "format": "docx"}, "format"),
        ({"resource": "orders", "format": "csv", "compression": "lz4"}, "compression"),
        ({"resource": "orders", "columns": ["id", "password"]}, "columns"),
        ({"resource": "orders", "filters": {"note": "x"}}, "filters"),
        ({"resource": "orders", "filters": {"date_from": "yesterday"}}, "filters.date_from"),
        ({"resource": "orders", "notify": {"email": "a@b"}}, "notify.email"),
        ({"resource": "orders", "notify": {"webhook_url": "ftp://x.example"}}, "notify.webhook_url"),
        ({"resource": "orders", "link_expiry_hours": 1000}, "link_expiry_hours"),
        ({"resource": "orders", "max_rows_per_file": 0}, "max_rows_per_file"),
        ({"resource": "orders", "sql": "select 1"}, "sql"),
        ({"resource": "orders", "tenant_id": "someone-else"}, "tenant_id"),
    ],
)
def test_validation_errors_name_the_field(client, tenant_key, catalog, body, field):
    tenant, token = tenant_key
    answer = post(client, token, body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_request" and error["field"] == field, error
    # The request sensor's own check gives the same message for the fields it knows.
    if field in ("resource", "format", "compression", "columns", "filters", "filters.date_from"):
        with pytest.raises(ExportError) as sensor:
            check_request_fields(
                load_catalog(),
                (),
                tenant_id=tenant,
                resource=body["resource"],
                format=body.get("format", "csv"),
                compression=body.get("compression"),
                columns=body.get("columns"),
                filters=body.get("filters", {}),
                webhook_url=None,
                email=None,
            )
        assert error["message"] == str(sensor.value)
    if field == "format":
        assert "allowed: csv, csv_excel" in error["message"]


def test_bad_json_and_bad_query(client, tenant_key):
    _, token = tenant_key
    bad = client.post(
        "/v1/exports", content=b"{nope", headers={**auth(token), "Content-Type": "application/json"}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "body"
    for params, field in [
        ({"limit": 101}, "limit"),
        ({"status": "done"}, "status"),
        ({"cursor": "zz"}, "cursor"),
    ]:
        answer = client.get("/v1/exports", params=params, headers=auth(token))
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text


def test_tenant_isolation(client, source_url):
    a, b = fresh_tenant(), fresh_tenant()
    key_a, key_b = key_for(source_url, a), key_for(source_url, b)
    created = post(client, key_a, {"resource": "orders"}).json()
    path = f"/v1/exports/{created['id']}"
    for method, suffix in [
        ("GET", ""),
        ("GET", "/files"),
        ("GET", "/files/1"),
        ("GET", "/manifest"),
        ("GET", "/events"),
        ("POST", "/cancel"),
        ("DELETE", ""),
    ]:
        answer = client.request(method, path + suffix, headers=auth(key_b))
        assert answer.status_code == 404, (method, suffix, answer.text)
        assert answer.json()["error"]["code"] == "not_found"
    assert client.get("/v1/exports", headers=auth(key_b)).json()["data"] == []
    assert [d["id"] for d in client.get("/v1/exports", headers=auth(key_a)).json()["data"]] == [created["id"]]
    # A tenant key cannot name another tenant.
    assert client.get("/v1/exports", params={"tenant_id": a}, headers=auth(key_b)).status_code == 404
    assert client.get(path, headers=auth(key_a)).json()["status"] == "pending"


def test_operator_key_acts_for_any_tenant_and_the_log_says_so(client, source_url, caplog):
    tenant = fresh_tenant()
    operator = key_for(source_url, None, operator=True, name="data-team")
    caplog.set_level(logging.INFO, logger="export_pipelines.api.requests")
    created = post(client, operator, {"resource": "orders", "tenant_id": tenant})
    assert created.status_code == 202, created.text
    assert created.json()["tenant_id"] == tenant
    listed = client.get("/v1/exports", params={"tenant_id": tenant}, headers=auth(operator)).json()
    assert [d["id"] for d in listed["data"]] == [created.json()["id"]]
    assert client.get(f"/v1/exports/{created.json()['id']}", headers=auth(operator)).status_code == 200
    no_tenant = post(client, operator, {"resource": "orders"})
    assert no_tenant.status_code == 422 and no_tenant.json()["error"]["field"] == "tenant_id"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "export_pipelines.api.requests"]
    acted = [e for e in lines if e["operator"] and e["key_name"] == "data-team" and e["tenant"] == tenant]
    # The create (tenant in the body) and the listing (?tenant_id=) name the tenant acted for.
    assert [e["method"] for e in acted] == ["POST", "GET"], lines


def test_cap_answers_429_with_retry_after(client, tenant_key, db):
    tenant, token = tenant_key
    cap = db.execute("SELECT value FROM export_limits WHERE name = 'tenant_max_active'").fetchone()["value"]
    ids = []
    for _ in range(cap):
        answer = post(client, token, {"resource": "orders"})
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    over = post(client, token, {"resource": "orders"})
    assert over.status_code == 429, over.text
    assert int(over.headers["Retry-After"]) > 0
    error = over.json()["error"]
    assert error["code"] == "too_many_active_exports"
    assert f"at most {cap} exports may be active" in error["message"] and "EXPORT_" not in error["message"]
    # The same cap for a row inserted by SQL (the other door).
    with pytest.raises(psycopg.Error) as by_sql:
        db.execute("INSERT INTO export_requests (tenant_id, resource) VALUES (%s, 'orders')", [tenant])
    assert by_sql.value.sqlstate == "EX429"
    # A canceled export frees a place.
    assert client.post(f"/v1/exports/{ids[0]}/cancel", headers=auth(token)).json()["status"] == "canceled"
    assert post(client, token, {"resource": "orders"}).status_code == 202


def test_idempotency(client, tenant_key, db):
    tenant, token = tenant_key
    body = {"resource": "orders", "format": "csv", "columns": ["id", "amount"]}
    first = post(client, token, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    replay = post(client, token, body, **{"Idempotency-Key": "k-1"})
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Location"] == first.headers["Location"]
    other = post(client, token, {**body, "format": "jsonl"}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_conflict"
    count = db.execute("SELECT count(*) AS n FROM export_requests WHERE tenant_id = %s", [tenant]).fetchone()
    assert count["n"] == 1
    # While the first request with a key is still being created: 409.
    with psycopg.connect(db.info.dsn, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(hashtext('export_api_idempotency'), hashtext(%s || E'\\n' || %s))",
            [tenant, "k-2"],
        )
        busy = post(client, token, body, **{"Idempotency-Key": "k-2"})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "idempotency_in_flight"
    assert post(client, token, body, **{"Idempotency-Key": "k-2"}).status_code == 202
    # Keys are per tenant: another tenant's same key is a new request.
    other_tenant = key_for(db.info.dsn, fresh_tenant())
    assert post(client, other_tenant, body, **{"Idempotency-Key": "k-1"}).json()["id"] != first.json()["id"]


def test_list_is_keyset_paginated_newest_first(client, tenant_key, db):
    tenant, token = tenant_key
    # Finished rows (as the service leaves them) do not count against the cap.
    ids = []
    for i in range(7):
        row = db.execute(
            "INSERT INTO export_requests (tenant_id, resource, status, created_at) "
            "VALUES (%s, 'orders', %s, now() - make_interval(mins => %s)) RETURNING id",
            [tenant, "failed" if i % 3 == 0 else "succeeded", 10 - i],
        ).fetchone()
        ids.append(str(row["id"]))
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/exports", params=params, headers=auth(token)).json()
        seen += [d["id"] for d in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == list(reversed(ids))
    failed = client.get("/v1/exports", params={"status": "failed"}, headers=auth(token)).json()
    assert [d["id"] for d in failed["data"]] == [ids[6], ids[3], ids[0]]
    assert failed["data"][0]["error"] == {"code": "internal", "message": "the export failed"}


@pytest.fixture
def finished(client, tenant_key, source_url, catalog, s3_client, bucket, api, db):
    """A real export of a small tenant in several files, its row succeeded."""
    _, token = tenant_key
    created = post(client, token, {"resource": "orders", "format": "csv", "max_rows_per_file": 400})
    assert created.status_code == 202, created.text
    row = db.execute("SELECT * FROM export_requests WHERE id = %s", [created.json()["id"]]).fetchone()
    row = {**row, "id": str(row["id"]), "tenant_id": SMALL}
    db.execute("UPDATE export_requests SET tenant_id = %s WHERE id = %s", [SMALL, row["id"]])
    # The key's tenant is now SMALL's: give the test a key of that tenant.
    token = key_for(source_url, SMALL)
    done = complete_export(source_url, catalog, s3_client, bucket, api.settings.prefix, row)
    assert len(done.files) >= 2
    return row["id"], token, done


def test_files_links_redirect_and_manifest(client, finished, pg):
    export_id, token, done = finished
    files = client.get(f"/v1/exports/{export_id}/files", headers=auth(token))
    assert files.status_code == 200, files.text
    data = files.json()["data"]
    assert [f["number"] for f in data] == list(range(1, len(done.files) + 1))
    assert data[0]["filename"].endswith("-00001.csv.gz") and SMALL in data[0]["filename"]
    rows = []
    for entry in data:
        body = httpx.get(entry["url"]).content
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] and len(body) == entry["bytes"]
        rows += list(csv.reader(io.StringIO(gzip.decompress(body).decode())))[1:]
    expected = pg.execute("SELECT count(*) FROM orders WHERE tenant_id = %s", [SMALL]).fetchone()[0]
    assert len(rows) == expected == sum(f["rows"] for f in data)

    redirect = client.get(f"/v1/exports/{export_id}/files/2", headers=auth(token))
    assert redirect.status_code == 302
    assert httpx.get(redirect.headers["Location"]).content == httpx.get(data[1]["url"]).content
    assert client.get(f"/v1/exports/{export_id}/files/99", headers=auth(token)).status_code == 404
    assert client.get(f"/v1/exports/{export_id}/files/0", headers=auth(token)).status_code == 422

    manifest = client.get(f"/v1/exports/{export_id}/manifest", headers=auth(token))
    assert manifest.status_code == 200 and manifest.json()["export_id"] == export_id
    status = client.get(f"/v1/exports/{export_id}", headers=auth(token)).json()
    assert status["status"] == "succeeded" and status["percent"] == 100.0


def test_delete_removes_the_files_and_expires(client, finished, s3_client, bucket):
    export_id, token, done = finished
    gone = client.delete(f"/v1/exports/{export_id}", headers=auth(token))
    assert gone.status_code == 200 and gone.json()["status"] == "expired"
    folder = done.manifest_key.rsplit("/", 1)[0] + "/"
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=folder).get("KeyCount", 0) == 0
    assert client.get(f"/v1/exports/{export_id}/files", headers=auth(token)).status_code == 410
    assert client.delete(f"/v1/exports/{export_id}", headers=auth(token)).status_code == 200


def test_files_of_an_unfinished_export_answer_409(client, tenant_key):
    _, token = tenant_key
    created = post(client, token, {"resource": "orders"}).json()
    for suffix in ("/files", "/files/1", "/manifest"):
        answer = client.get(f"/v1/exports/{created['id']}{suffix}", headers=auth(token))
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "export_not_ready"
    assert client.delete(f"/v1/exports/{created['id']}", headers=auth(token)).status_code == 409


def deliveries_of(db, rid: str) -> list[tuple[str, str, str]]:
    rows = db.execute(
        "SELECT event, channel, target FROM export_deliveries WHERE request_id = %s ORDER BY id", [rid]
    ).fetchall()
    return [(d["event"], d["channel"], d["target"]) for d in rows]


def test_cancel_commits_canceled_at_once_and_notifies_only_a_started_export(client, tenant_key, db):
    tenant, token = tenant_key
    # The tenant's default targets: a notifying cancel uses them when the request names none.
    db.execute(
        "INSERT INTO export_tenant_settings (tenant_id, email) VALUES (%s, 'defaults@example.com')",
        [tenant],
    )
    try:
        own = {"resource": "orders", "notify": {"email": "ops@example.com"}}
        pending = post(client, token, own).json()
        canceled = client.post(f"/v1/exports/{pending['id']}/cancel", headers=auth(token))
        assert canceled.status_code == 202
        doc = canceled.json()
        assert doc["status"] == "canceled" and doc["error"]["code"] == "canceled"
        assert doc["error"]["message"] == "canceled before it started"
        # Canceled before any run started: nobody is told, not its targets, not the tenant's defaults.
        assert deliveries_of(db, pending["id"]) == []
        again = client.post(f"/v1/exports/{pending['id']}/cancel", headers=auth(token))
        assert again.status_code == 202 and again.json()["status"] == "canceled"
        assert deliveries_of(db, pending["id"]) == []

        # Queued (a run may be starting): canceled at once too, and left to the cancel sensor.
        queued = post(client, token, {"resource": "orders"}).json()
        db.execute("UPDATE export_requests SET status = 'queued' WHERE id = %s", [queued["id"]])
        doc = client.post(f"/v1/exports/{queued['id']}/cancel", headers=auth(token)).json()
        assert doc["status"] == "canceled" and doc["cancel_requested_at"] is not None
        assert deliveries_of(db, queued["id"]) == []

        # Running: canceled at once; export.canceled for its own targets, else the tenant's defaults.
        for body, told in ((own, "ops@example.com"), ({"resource": "orders"}, "defaults@example.com")):
            running = post(client, token, body).json()
            db.execute(
                "UPDATE export_requests SET status = 'running', run_id = 'r1', rows_total = 10 WHERE id = %s",
                [running["id"]],
            )
            doc = client.post(f"/v1/exports/{running['id']}/cancel", headers=auth(token)).json()
            assert doc["status"] == "canceled" and doc["error"]["code"] == "canceled"
            assert deliveries_of(db, running["id"]) == [("export.canceled", "email", told)]
            row = db.execute(
                "SELECT cancel_cleanup_pending FROM export_requests WHERE id = %s", [running["id"]]
            ).fetchone()
            assert row["cancel_cleanup_pending"]  # the cancel sensor stops the run, empties the folder

        # A canceled row stays canceled: nothing a late op or a run retry writes makes it succeed.
        for status in ("succeeded", "running", "failed"):
            with pytest.raises(psycopg.Error) as refused:
                db.execute("UPDATE export_requests SET status = %s WHERE id = %s", [status, running["id"]])
            assert refused.value.sqlstate == "EX409"
        history = db.execute(
            "SELECT from_status, to_status FROM export_request_status_history WHERE request_id = %s ORDER BY id",
            [running["id"]],
        ).fetchall()
        assert [(h["from_status"], h["to_status"]) for h in history] == [
            (None, "pending"),
            ("pending", "running"),
            ("running", "canceled"),
        ]

        finished = post(client, token, {"resource": "orders"}).json()
        db.execute("UPDATE export_requests SET status = 'succeeded' WHERE id = %s", [finished["id"]])
        late = client.post(f"/v1/exports/{finished['id']}/cancel", headers=auth(token))
        assert late.status_code == 409 and late.json()["error"]["code"] == "not_cancelable"
    finally:
        db.execute("DELETE FROM export_tenant_settings WHERE tenant_id = %s", [tenant])


def read_events(response: httpx.Response, into: list[dict[str, Any]]) -> None:
    event: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if event:
                into.append(event)
                event = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        event[name] = json.loads(value) if name == "data" else value


def test_sse_progress_then_final_event_and_resume(api, client, finished, db):
    export_id, token, done = finished
    # Back to running, then driven from here the way the export job reports progress.
    db.execute(
        "UPDATE export_requests SET status = 'running', rows_exported = 0, rows_total = %s, "
        "updated_at = now() WHERE id = %s",
        [done.rows, export_id],
    )
    events: list[dict[str, Any]] = []

    def listen() -> None:
        with httpx.stream(
            "GET", f"{api.url}/v1/exports/{export_id}/events", headers=auth(token), timeout=30
        ) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            read_events(r, events)

    listener = threading.Thread(target=listen)
    listener.start()
    for step in (1, 2, 3):
        time.sleep(1.2)
        db.execute(
            "UPDATE export_requests SET rows_exported = %s, bytes_written = %s, updated_at = now() WHERE id = %s",
            [done.rows * step // 4, 1000 * step, export_id],
        )
    time.sleep(1.2)
    db.execute(
        "UPDATE export_requests SET status = 'succeeded', rows_exported = %s, updated_at = now() WHERE id = %s",
        [done.rows, export_id],
    )
    listener.join(timeout=20)
    assert not listener.is_alive()
    names = [e["event"] for e in events]
    assert names[-1] == "succeeded" and names.count("progress") >= 3, names
    progress = [e["data"]["rows_exported"] for e in events if e["event"] == "progress"]
    assert progress == sorted(progress) and progress[-1] > 0
    final = events[-1]["data"]
    assert final["status"] == "succeeded" and len(final["files"]) == len(done.files)
    assert httpx.get(final["files"][0]["url"]).status_code == 200
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    # A client that saw the final event and reconnects hears nothing more; one that saw only a
    # progress event gets the final event.
    with httpx.stream(
        "GET",
        f"{api.url}/v1/exports/{export_id}/events",
        headers={**auth(token), "Last-Event-ID": events[-1]["id"]},
    ) as r:
        assert r.read() == b""
    again: list[dict[str, Any]] = []
    with httpx.stream(
        "GET",
        f"{api.url}/v1/exports/{export_id}/events",
        headers={**auth(token), "Last-Event-ID": events[0]["id"]},
    ) as r:
        read_events(r, again)
    assert [e["event"] for e in again] == ["succeeded"] and int(again[0]["id"]) > int(events[0]["id"])


def test_queue_position_is_the_fair_queue_order(db):
    """The cheap aggregate gives the same position as ranking every waiting row."""
    from export_pipelines.core.requests.queue import (
        QUEUE_POSITION_REFERENCE_SQL,
        QUEUE_POSITION_SQL,
        QUEUE_POSITIONS_SQL,
    )

    tenants = [fresh_tenant() for _ in range(3)]
    ids = []
    with db.transaction():
        db.execute("LOCK TABLE export_requests IN SHARE ROW EXCLUSIVE MODE")
        for i, tenant in enumerate([0, 0, 0, 1, 2, 2, 1, 0, 2, 1]):
            row = db.execute(
                "INSERT INTO export_requests (tenant_id, resource, status, created_at) "
                "VALUES (%s, 'orders', 'succeeded', now() - interval '1 hour' + make_interval(secs => %s)) "
                "RETURNING id",
                [tenants[tenant], i],
            ).fetchone()
            ids.append(row["id"])
        # Waiting, but not counted by the cap (set after insert, as the service would not): a
        # transaction of their own keeps other tests' rows out of the comparison.
        db.execute("UPDATE export_requests SET status = 'pending' WHERE id = ANY(%s)", [ids])
        positions = [db.execute(QUEUE_POSITION_SQL, {"id": i}).fetchone()["ahead"] for i in ids]
        reference = [db.execute(QUEUE_POSITION_REFERENCE_SQL, {"id": i}).fetchone()["ahead"] for i in ids]
        # The snapshot the API's status reads share (every waiting row in one query).
        snapshot = {r["id"]: r["ahead"] for r in db.execute(QUEUE_POSITIONS_SQL).fetchall()}
        db.execute("UPDATE export_requests SET status = 'canceled' WHERE id = ANY(%s)", [ids])
    assert positions == reference == [snapshot[str(i)] for i in ids]
    assert len(set(positions)) == 10  # other tests' waiting rows may be ahead, never level


def test_api_key_cli(source_url, capsys, monkeypatch, client):
    from export_pipelines.cli.main import main

    monkeypatch.setenv("SOURCE_DATABASE_URL", source_url)
    tenant = "t-002"  # a tenant the tenants table lists: create refuses any other
    assert main(["api-key", "create", "--tenant", tenant, "--name", "billing-app"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("exp_") and client.get("/v1/exports", headers=auth(token)).status_code == 200
    assert main(["api-key", "list", "--tenant", tenant]) == 0
    listed = capsys.readouterr().out
    assert token[:12] in listed and "billing-app" in listed and token not in listed
    assert main(["api-key", "revoke", token[:12]]) == 0
    assert client.get("/v1/exports", headers=auth(token)).status_code == 401
    assert main(["api-key", "revoke", token[:12]]) == 1
    assert main(["api-key", "create"]) == 2


def test_the_manifest_and_its_signature_verify_through_the_api(
    client, tenant_key, source_url, catalog, s3_client, bucket, api, db, finished
):
    """/manifest answers the stored bytes exactly (what the signature covers) and /manifest.sig the
    signature, which the signer's public key accepts; an unsigned manifest has no signature (404)."""
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from export_pipelines.core.engine.signing import generate_signing_key, load_signer

    unsigned_id, unsigned_token, _ = finished
    assert (
        client.get(f"/v1/exports/{unsigned_id}/manifest.sig", headers=auth(unsigned_token)).status_code == 404
    )
    _, token = tenant_key
    created = post(client, token, {"resource": "orders", "format": "csv"})
    assert created.status_code == 202, created.text
    row = db.execute("SELECT * FROM export_requests WHERE id = %s", [created.json()["id"]]).fetchone()
    signer = load_signer(generate_signing_key())
    done = complete_export(
        source_url, catalog, s3_client, bucket, api.settings.prefix, {**row, "id": str(row["id"])}, signer
    )
    manifest = client.get(f"/v1/exports/{row['id']}/manifest", headers=auth(token))
    signature = client.get(f"/v1/exports/{row['id']}/manifest.sig", headers=auth(token))
    assert manifest.status_code == 200 and signature.status_code == 200, (manifest.text, signature.text)
    stored = s3_client.get_object(Bucket=bucket, Key=done.manifest_key)["Body"].read()
    assert manifest.content == stored
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(signer.published().public_key))
    public.verify(base64.b64decode(signature.content), manifest.content)  # raises if it does not hold
    tampered = manifest.content.replace(b'"rows_total"', b'"rows_totaL"')
    with pytest.raises(InvalidSignature):
        public.verify(base64.b64decode(signature.content), tampered)


@pytest.mark.parametrize("destination_id", ["not-a-uuid", "U\u0000\u009a", 7])
def test_a_destination_id_that_is_no_destination_is_refused_naming_the_field(
    client, tenant_key, destination_id
):
    _, token = tenant_key
    answer = post(client, token, {"resource": "orders", "destination_id": destination_id})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "destination_id"
