"""export_request_sensor and the request row's life: pending → queued → running → succeeded | failed."""

from __future__ import annotations

import csv
import io
import json
import logging

import dagster as dg
import psycopg
import pytest

from export_pipelines.core.requests.queue import RequestQueue
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.storage.migrations import migrate
from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines.orchestration.definitions import build_definitions
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines.orchestration.sensors import record_run_failure
from export_pipelines.settings import Settings
from export_pipelines_tests.support.readback import read_manifest
from export_pipelines_tests.support.services import code_location, run_export_job

export_request_sensor = code_location()["export_request_sensor"]


def tick(resources, instance=None):
    # The `with` block tears the resources down after the tick, as the daemon does.
    with dg.build_sensor_context(
        instance=instance or dg.DagsterInstance.ephemeral(), resources=resources
    ) as context:
        return export_request_sensor(context).run_requests or []


def test_migration_is_idempotent(store, source_url):
    migrate(source_url)
    migrate(source_url)
    with psycopg.connect(source_url) as conn:
        cols = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'export_requests'"
            )
        }
    assert {
        "id",
        "tenant_id",
        "resource",
        "format",
        "compression",
        "filters",
        "columns",
        "webhook_url",
        "email",
        "status",
        "attempt",
        "rows_total",
        "rows_exported",
        "bytes_written",
        "run_id",
        "manifest_key",
        "download_url",
        "expires_at",
        "error",
        "created_at",
        "started_at",
        "completed_at",
        "updated_at",
    } <= cols


def test_pending_row_becomes_one_run_request_once(store, dagster_resources):
    rid = store.create(tenant_id="t-004", resource="orders", format="csv", filters={"status": ["paid"]})
    requests = tick(dagster_resources)
    assert [r.run_key for r in requests] == [f"{rid}:1"]
    (req,) = requests
    assert req.tags["tenant"] == "t-004"
    cfg = req.run_config["ops"]["count_rows"]["config"]
    assert cfg["request_id"] == rid and cfg["filters"] == {"status": ["paid"]}
    assert store.get(rid).status == "queued"
    # A second tick, and a tick from a "restarted" daemon (new context, no cursor): no new run.
    assert tick(dagster_resources) == []
    assert tick(dagster_resources, dg.DagsterInstance.ephemeral()) == []


def test_queued_row_whose_run_never_started_is_re_requested_with_the_same_run_key(
    store, dagster_resources, source_url
):
    rid = store.create(tenant_id="t-004", resource="orders")
    (first,) = tick(dagster_resources)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE export_requests SET queued_at = now() - interval '1 hour' WHERE id = %s", [rid])
    (again,) = tick(dagster_resources)
    assert again.run_key == first.run_key == f"{rid}:1"  # Dagster launches a run_key only once


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"resource": "invoices"}, "resource: unknown resource 'invoices'; allowed: orders"),
        (
            {"format": "xml"},
            "format: unknown format 'xml'; allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx",
        ),
        (
            {"format": "xlsx", "compression": "gzip"},
            "compression: 'gzip' is not available for xlsx; allowed: none",
        ),
        ({"columns": ["id", "ssn"]}, "columns: unknown column(s) 'ssn'"),
        ({"filters": {"note": "x"}}, "filters: 'note' is not a filter"),
        ({"filters": {"date_from": "31/12/2024"}}, "filters.date_from: '31/12/2024' is not an ISO 8601"),
        ({"filters": {"date_from": "2024-05-01", "date_to": "2024-04-01"}}, "filters.date_to: must be after"),
        ({"webhook_url": "file:///etc/passwd"}, "webhook_url: must be an http(s) URL"),
        (
            {"compression": "brotli"},
            "compression: 'brotli' is not available for csv; allowed: gzip, none, zstd",
        ),
    ],
)
def test_invalid_request_fails_without_a_run_and_others_still_run(store, dagster_resources, fields, reason):
    args = {"tenant_id": "t-004", "resource": "orders", **fields}
    bad = store.create(**args)
    good = store.create(tenant_id="t-006", resource="orders")
    requests = tick(dagster_resources)
    assert [r.run_key for r in requests] == [f"{good}:1"]
    row = store.get(bad)
    assert row.status == "failed" and row.run_id is None
    assert reason in row.error


def test_malformed_filters_json_is_rejected(store, dagster_resources, source_url):
    rid = store.create(tenant_id="t-004", resource="orders")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE export_requests SET filters = %s::jsonb WHERE id = %s", [json.dumps([1, 2]), rid]
        )
    assert tick(dagster_resources) == []
    assert "filters: must be a JSON object" in store.get(rid).error


def test_failed_row_set_back_to_pending_runs_again_with_next_attempt(store, dagster_resources, source_url):
    rid = store.create(tenant_id="t-004", resource="orders")
    tick(dagster_resources)
    store.mark_failed(rid, "boom")
    assert tick(dagster_resources) == []
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE export_requests SET status = 'pending', attempt = attempt + 1 WHERE id = %s", [rid]
        )
    assert [r.run_key for r in tick(dagster_resources)] == [f"{rid}:2"]


def test_run_moves_the_row_to_succeeded_with_link(store, dagster_resources, pg):
    rid = store.create(tenant_id="t-007", resource="orders", format="parquet")
    (req,) = tick(dagster_resources)
    result = run_export_job(
        run_config=req.run_config, resources=dagster_resources, tags=req.tags, raise_on_error=False
    )
    assert result.success
    row = store.get(rid)
    expected = pg.execute("SELECT count(*) FROM orders WHERE tenant_id = 't-007'").fetchone()[0]
    assert row.status == "succeeded" and row.run_id == result.run_id
    assert row.rows_total == row.rows_exported == expected
    assert row.bytes_written > 0 and row.download_url.startswith("http")
    assert row.manifest_key.endswith(f"/tenant=t-007/orders/{rid}/manifest.json")
    assert row.expires_at > row.completed_at and row.error is None


def test_failed_run_marks_the_row_failed_unless_it_will_be_retried(store, dagster_resources):
    rid = store.create(tenant_id="t-007", resource="orders")
    store.mark_queued(rid, 1)
    store.mark_running(rid, "run-1", 10)
    retrying = dg.DagsterRun(
        job_name="tenant_export_job",
        run_id="r1",
        tags={"export/request_id": rid, "dagster/will_retry": "true"},
    )
    record_run_failure(
        retrying, "worker died", dagster_resources["source"], dagster_resources["notifier"], None
    )
    row = store.get(rid)
    assert row.status == "running" and row.error.endswith("(retrying)") and row.error_code == "internal"
    final = dg.DagsterRun(
        job_name="tenant_export_job",
        run_id="r2",
        tags={"export/request_id": rid, "dagster/will_retry": "false"},
    )
    record_run_failure(
        final, "S3 NoSuchBucket", dagster_resources["source"], dagster_resources["notifier"], None
    )
    row = store.get(rid)
    # The tenant reads a code and a short stable message, not the internal
    # error (which stays in the run's log); this test used to assert the internal text reached the row.
    assert row.status == "failed" and row.error_code == "internal"
    assert "S3 NoSuchBucket" not in row.error and "internal error" in row.error


def test_invalid_request_found_at_run_time_fails_the_row(store, dagster_resources, source_url):
    # The catalog allows it, but the run finds a problem (here: an unknown filter slipped in).
    rid = store.create(tenant_id="t-007", resource="orders")
    result = run_export_job(
        run_config=export_run_config(
            tenant_id="t-007", resource="orders", request_id=rid, filters={"secret": 1}
        ),
        resources=dagster_resources,
        raise_on_error=False,
    )
    assert not result.success
    row = store.get(rid)
    assert row.status == "failed" and "filters: 'secret' is not a filter" in row.error


def test_definitions_have_the_sensors_and_schedules():
    defs = build_definitions(Settings())
    assert {s.name for s in defs.sensors} >= {
        "export_request_sensor",
        "tenant_partitions_sensor",
        "export_failure_sensor",
    }
    assert {s.name for s in defs.schedules} == {"monthly_enterprise_export_schedule", "janitor_schedule"}


def test_final_failure_aborts_the_dead_runs_uploads(store, dagster_resources, s3_client, bucket, prefix):
    """A run worker that died for the last time leaves an upload open: the failure sensor aborts
    it (a retried run is left alone, its next attempt continues the upload)."""
    folder = f"{prefix}/tenant=t-007/orders/dead/"
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=folder + "part-00001.csv.gz")
    tags = {"export/folder": folder}
    args = (dagster_resources["source"], dagster_resources["notifier"], logging.getLogger("test"))
    resources = (dagster_resources["s3"], dagster_resources["export_settings"])
    retrying = dg.DagsterRun(
        job_name="tenant_export_job", run_id="r1", tags={**tags, "dagster/will_retry": "true"}
    )
    record_run_failure(retrying, "worker died", *args, *resources)
    assert [u["UploadId"] for u in open_uploads(s3_client, bucket, folder)] == [upload["UploadId"]]
    final = dg.DagsterRun(job_name="tenant_export_job", run_id="r2", tags=tags)
    record_run_failure(final, "worker died", *args, *resources)
    assert open_uploads(s3_client, bucket, folder) == []


def test_excel_csv_requested_from_the_table(store, dagster_resources, s3_client, bucket, pg):
    """The CSV excel profile is a format name, so the request table needs no new column."""
    rid = store.create(tenant_id="t-003", resource="orders", format="csv_excel", columns=["id", "note"])
    (req,) = tick(dagster_resources)
    assert req.run_config["ops"]["count_rows"]["config"]["format"] == "csv_excel"
    result = run_export_job(
        run_config=req.run_config, resources=dagster_resources, tags=req.tags, raise_on_error=False
    )
    assert result.success
    row = store.get(rid)
    manifest = read_manifest(s3_client, bucket, row.manifest_key)
    assert manifest["format"] == "csv_excel" and manifest["compression"] == "none"
    (f,) = manifest["files"]
    data = s3_client.get_object(Bucket=bucket, Key=f["key"])["Body"].read()
    assert f["key"].endswith(".csv") and data.startswith(b"\xef\xbb\xbfid,note\r\n")
    notes = [r[0] for r in pg.execute("SELECT note FROM orders WHERE tenant_id = 't-003' ORDER BY id")]
    text = data.decode("utf-8-sig")
    got = [r[1] for r in csv.reader(io.StringIO(text, newline=""))][1:]
    assert len(got) == len(notes)
    for have, want in zip(got, notes, strict=True):
        want = want or ""
        assert have == ("'" + want if want[:1] in ("=", "+", "-", "@", "\t", "\r") else want)
    assert '\'=HYPERLINK("http://x")' in got  # the demo's formula, defused


def test_failure_seen_before_dagster_tags_it_gets_dagsters_retry_decision():
    """The failure sensor can see a run's failure before Dagster adds `dagster/will_retry`; it must
    not take that for a final failure (it would abort the upload the retry continues)."""
    from export_pipelines.orchestration.sensors import with_retry_decision

    overrides = {"run_retries": {"enabled": True, "max_retries": 2}}
    with dg.instance_for_test(overrides=overrides) as instance:
        died = instance.add_run(
            dg.DagsterRun(job_name="tenant_export_job", run_id="died", status=dg.DagsterRunStatus.FAILURE)
        )
        assert "dagster/will_retry" not in died.tags
        decided = with_retry_decision(instance, died)
        assert decided.tags["dagster/will_retry"] == "true"
        assert instance.get_run_by_id("died").tags["dagster/will_retry"] == "true"


# Here, not beside the submitter test: that module's running submitter hears the insert's NOTIFY
# and claims the row itself before either read below.
def test_a_row_claimed_by_one_door_is_not_started_by_the_other(store, source_url, dagster_resources):
    rid = store.create(tenant_id="t-004", resource="orders", format="csv")
    (read_by_submitter,) = [r for r in RequestQueue.on(store.conn).to_launch() if r.id == rid]
    with RequestStore(source_url) as other:
        (read_by_sensor,) = [r for r in RequestQueue.on(other.conn).to_launch() if r.id == rid]
        assert RequestQueue.on(store.conn).claim(read_by_submitter)
        assert not RequestQueue.on(other.conn).claim(
            read_by_sensor
        )  # read the same pending row; lost the race
    # The sensor, ticking now, sees a fresh queued row (not stale): no second run request.
    assert tick(dagster_resources) == []
    assert store.get(rid).status == "queued"
