"""End to end with the Dagster daemon really running: a row in export_requests becomes a file.

The daemon runs the sensors, the run queue and run monitoring against instance storage in
PostgreSQL; runs are launched in their own processes exactly as in production.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from export_pipelines_tests.conftest import WEBHOOK_SECRET, _with_db
from export_pipelines_tests.readback import csv_rows, read_manifest

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"succeeded", "failed"}


def wait_for(store, request_id: str, timeout: float = 180) -> tuple[object, float]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        row = store.get(request_id)
        if row.status in TERMINAL:
            return row, time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"request {request_id} still {store.get(request_id).status} after {timeout}s")


@pytest.fixture(scope="module")
def daemon(stack_env, source_url, s3_client, bucket, tmp_path_factory) -> Iterator[dict[str, str]]:
    dagster_db = "dagster_e2e"
    admin = _with_db(stack_env["SOURCE_DATABASE_URL"], "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dagster_db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dagster_db}"')
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {
        **os.environ,
        **stack_env,
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": _with_db(stack_env["SOURCE_DATABASE_URL"], dagster_db),
        "SOURCE_DATABASE_URL": source_url,
        "EXPORT_BUCKET": bucket,
        "EXPORT_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}",
        "EXPORT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "EXPORT_SENSOR_INTERVAL_SECONDS": "2",
    }
    log = open(home / "daemon.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so teardown also stops the run workers it launched
    )
    try:
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_request_row_to_download_through_the_daemon(daemon, store, s3_client, bucket, pg):
    good = store.create(
        tenant_id="t-002", resource="orders", format="csv", filters={"status": ["paid", "shipped"]}
    )
    bad = store.create(tenant_id="t-002", resource="orders", format="xlsx-but-in-color")
    row, seconds = wait_for(store, good)
    assert row.status == "succeeded", row.error
    print(f"\nrequest → succeeded through the daemon in {seconds:.1f}s")
    bad_row, _ = wait_for(store, bad, timeout=30)
    assert bad_row.status == "failed" and bad_row.run_id is None
    assert (
        "format: unknown format 'xlsx-but-in-color'; allowed: csv, csv_excel, json, jsonl, parquet, xlsx"
        in bad_row.error
    )

    with urllib.request.urlopen(row.download_url, timeout=30) as resp:
        data = gzip.decompress(resp.read()).decode()
    expected = pg.execute(
        "SELECT count(*) FROM orders WHERE tenant_id = 't-002' AND status IN ('paid', 'shipped')"
    ).fetchone()[0]
    manifest = read_manifest(s3_client, bucket, row.manifest_key)
    _, rows = csv_rows(s3_client, bucket, manifest)
    assert len(rows) == expected == row.rows_exported == row.rows_total > 0
    assert data.startswith("id,tenant_id,created_at")
    assert row.manifest_key.startswith(daemon["EXPORT_PREFIX"] + "/tenant=t-002/orders/" + good)
