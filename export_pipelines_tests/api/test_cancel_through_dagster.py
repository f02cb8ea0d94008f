"""Cancel through the API, carried out by Dagster: a running export is terminated by the
run launcher, its open upload is aborted, the row ends `canceled` and `export.canceled` is recorded
for the requester — with the real daemon, API server, PostgreSQL and S3."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest

from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve
from export_pipelines_tests.support.daemon import running_daemon
from export_pipelines_tests.support.s3_fault_proxy import S3FaultProxy, hang

BIG = "t-big"


@pytest.fixture(scope="module")
def proxy(stack_env) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as p:
        yield p


@pytest.fixture(scope="module")
def daemon(stack_env, source_url, bucket, proxy, tmp_path_factory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("dagster_home_cancel")
    with running_daemon(
        stack_env, source_url, bucket, home, "dagster_cancel", AWS_ENDPOINT_URL=proxy.endpoint_url
    ) as env:
        yield env


def call(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=auth(token))
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read() or b"{}")


def run_status(daemon: dict[str, str], run_id: str | None) -> str | None:
    with psycopg.connect(daemon["DAGSTER_POSTGRES_URL"], autocommit=True) as conn:
        row = conn.execute("SELECT status FROM runs WHERE run_id = %s", [run_id]).fetchone()
    return row[0] if row else None


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_cancel_of_a_running_export_terminates_the_run_and_leaves_no_open_upload(
    daemon, proxy, stack_env, source_url, s3_client, bucket, pg, store
):
    migrate_api(source_url)
    token = key_for(source_url, BIG)
    settings = api_settings(stack_env, source_url, bucket, daemon["EXPORT_PREFIX"])
    action = hang()  # part 2 of the export waits here: the run is running, mid-upload
    rule = proxy.add_fault(lambda r: r.operation == "UploadPart" and r.part_number == 2, action)
    try:
        with serve(settings) as api:
            status, doc = call(
                "POST",
                f"{api.url}/v1/exports",
                token,
                {"resource": "orders", "format": "csv", "compression": "none",
                 "notify": {"email": "ops@example.com"}},
            )  # fmt: skip
            assert status == 202
            rid = doc["id"]
            folder = f"{daemon['EXPORT_PREFIX']}/tenant={BIG}/orders/{rid}/"
            wait_until(lambda: rule.fired >= 1, 180, "the export to upload part 2")
            assert store.get(rid).status == "running"
            assert open_uploads(s3_client, bucket, folder), "the export should be mid-upload"

            status, doc = call("POST", f"{api.url}/v1/exports/{rid}/cancel", token)
            assert status == 202 and doc["cancel_requested_at"] is not None
            wait_until(lambda: run_status(daemon, store.get(rid).run_id) == "CANCELING", 60, "CANCELING")
            action.release()  # S3 answers again (the held part is reset): the run sees the cancel
            wait_until(lambda: store.get(rid).status == "canceled", 120, "the row to be canceled")
            status, doc = call("GET", f"{api.url}/v1/exports/{rid}", token)
            assert doc["status"] == "canceled" and doc["error"]["code"] == "canceled"
    finally:
        action.release()
    assert run_status(daemon, store.get(rid).run_id) == "CANCELED"
    wait_until(lambda: not open_uploads(s3_client, bucket, folder), 30, "the upload to be aborted")
    events = pg.execute(
        "SELECT event, channel FROM export_deliveries WHERE request_id = %s", [rid]
    ).fetchall()
    assert ("export.canceled", "email") in [tuple(e) for e in events]
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=folder).get("Contents", [])
    assert not [o["Key"] for o in listed if o["Key"].endswith("_SUCCESS")]
