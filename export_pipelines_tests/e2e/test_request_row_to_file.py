"""End to end with the Dagster daemon really running: a row in export_requests becomes a file.

The daemon runs the sensors, the run queue and run monitoring against instance storage in
PostgreSQL; runs are launched in their own processes exactly as in production.
"""

from __future__ import annotations

import gzip
import urllib.request
from collections.abc import Iterator

import pytest

from export_pipelines_tests.support.daemon import running_daemon, wait_for
from export_pipelines_tests.support.readback import csv_rows, read_manifest


@pytest.fixture(scope="module")
def daemon(stack_env, source_url, s3_client, bucket, tmp_path_factory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("dagster_home")
    with running_daemon(stack_env, source_url, bucket, home, "dagster_e2e") as env:
        yield env


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
        "format: unknown format 'xlsx-but-in-color'; allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx"
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
