"""The trust boundary of the request table and the queue: the app role, CHECKs, per-tenant caps, the
fair and rate-limited queue, the reaper, tenant ids that cannot be partitions or keys, error codes."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest

from export_pipelines.core.engine.plan import check_file_count
from export_pipelines.core.errors import InvalidRequest, error_code
from export_pipelines.core.requests.queue import RequestQueue
from export_pipelines.core.requests.request import build_request, parse_instant
from export_pipelines.core.requests.request_row import OversizedFilters
from export_pipelines.core.storage.migrations import migrate
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.jobs import export_job_with
from export_pipelines.orchestration.monthly.partitions import monthly_partitions
from export_pipelines.orchestration.resources import ExportS3, ExportSettings
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines.orchestration.sensors import reap_unfinished_requests, record_run_failure
from export_pipelines_tests.support.services import code_location, run_export_job

LOCATION = code_location()
export_request_sensor = LOCATION["export_request_sensor"]
tenant_partitions_sensor = LOCATION["tenant_partitions_sensor"]
monthly_schedule = LOCATION["monthly_enterprise_export_schedule"]
LOG = logging.getLogger("test")


def tick(resources, instance=None):
    with dg.build_sensor_context(
        instance=instance or dg.DagsterInstance.ephemeral(), resources=resources
    ) as context:
        return export_request_sensor(context).run_requests or []


@pytest.fixture
def cap(store):
    """Set the per-tenant cap for one test; back to the default after."""

    def set_cap(value: int) -> None:
        store.set_tenant_max_active(value)

    yield set_cap
    store.set_tenant_max_active(5)


# ------------------------------------------------------------------------------ the app role


def test_app_role_may_insert_request_columns_only_and_never_update_or_delete(store, source_url):
    rid = store.create(tenant_id="t-001", resource="orders")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("SET ROLE export_app")
        got = conn.execute(
            "INSERT INTO export_requests (tenant_id, resource, format, compression, filters, columns, "
            "webhook_url, email, idempotency_key) VALUES ('t-002', 'orders', 'csv', NULL, '{}', NULL, "
            "NULL, 'a@example.com', 'k1') RETURNING id::text, status"
        ).fetchone()
        assert got is not None and got[1] == "pending"
        for column, value in [
            ("status", "'succeeded'"),
            ("manifest_key", "'exports/manifest.json'"),
            ("expires_at", "now()"),
            ("error", "'x'"),
            ("error_code", "'internal'"),
            ("run_id", "'r'"),
            ("download_url", "'http://x'"),
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(
                    f"INSERT INTO export_requests (tenant_id, resource, {column}) VALUES ('t-003', 'orders', {value})"
                )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE export_requests SET status = 'succeeded' WHERE id = %s", [rid])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM export_requests WHERE id = %s", [rid])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM export_limits")
    assert store.get(rid).status == "pending"


def test_check_constraints_bound_sizes_and_status(store, pg):
    for column, value in [
        ("filters", json.dumps({"status": "p" * 70_000})),
        ("columns", ["id"] * 1001),
        ("webhook_url", "https://example.com/" + "a" * 2050),
        ("email", "a" * 250 + "@example.com"),
        ("tenant_id", "t" * 257),
    ]:
        cast = "::jsonb" if column == "filters" else ""
        tenant = "'t-001', " if column != "tenant_id" else ""
        names = "tenant_id, resource" if column != "tenant_id" else "resource"
        with pytest.raises(psycopg.errors.CheckViolation, match="export_requests_size_check"):
            pg.execute(
                f"INSERT INTO export_requests ({names}, {column}) VALUES ({tenant}'orders', %s{cast})",
                [value],
            )
    rid = store.create(tenant_id="t-001", resource="orders")
    with pytest.raises(psycopg.errors.CheckViolation, match="status_check"):
        pg.execute("UPDATE export_requests SET status = 'done' WHERE id = %s", [rid])
    pg.execute("UPDATE export_requests SET status = 'canceled' WHERE id = %s", [rid])


def test_migration_stays_idempotent_with_the_trust_boundary(store, source_url):
    migrate(source_url)
    migrate(source_url, tenant_max_active=5)
    migrate(source_url)


# ------------------------------------------------------------------------ the queue


def test_cap_refused_at_insert_for_every_door(store, pg, cap):
    cap(3)
    for _ in range(3):
        store.create(tenant_id="t-001", resource="orders")
    with pytest.raises(InvalidRequest) as info:
        store.create(tenant_id="t-001", resource="orders")
    message = str(info.value)
    assert message.startswith("tenant_id:") and "'t-001'" in message
    assert "at most 3 exports may be active" in message and "retry after one finishes" in message
    with pytest.raises(psycopg.Error) as raw:  # an app's own INSERT: the same trigger
        pg.execute("INSERT INTO export_requests (tenant_id, resource) VALUES ('t-001', 'orders')")
    assert raw.value.sqlstate == "EX429"
    store.create(tenant_id="t-002", resource="orders")  # another tenant is not affected


def test_one_tenants_backlog_does_not_delay_anothers_first_request(store, dagster_resources, cap):
    cap(1000)
    backlog = [store.create(tenant_id="t-001", resource="orders") for _ in range(60)]
    other = store.create(tenant_id="t-002", resource="orders")
    picked = [r.id for r in RequestQueue.on(store.conn).to_launch(limit=50, starts_per_minute=1000)]
    assert other in picked[:2] and backlog[0] in picked[:2]
    launched = [r.tags["export/request_id"] for r in tick(dagster_resources)]
    assert other in launched


def test_queued_row_that_turned_invalid_is_failed_not_picked_forever(store, dagster_resources, pg):
    rid = store.create(tenant_id="t-001", resource="orders")
    store.mark_queued(rid, 1)
    pg.execute(
        "UPDATE export_requests SET format = 'nope', queued_at = now() - interval '1 hour' WHERE id = %s",
        [rid],
    )
    assert tick(dagster_resources) == []
    row = store.get(rid)
    assert row.status == "failed" and row.error_code == "invalid_request" and "format" in row.error
    assert RequestQueue.on(store.conn).to_launch() == []


def test_fifty_stuck_rows_do_not_stop_intake(store, dagster_resources, pg, cap):
    cap(1000)
    stuck = [store.create(tenant_id=f"t-{i % 20 + 1:03d}", resource="orders") for i in range(55)]
    pg.execute(
        "UPDATE export_requests SET status = 'queued', format = 'nope', "
        "queued_at = now() - interval '1 hour' WHERE id = ANY(%s::uuid[])",
        [stuck],
    )
    fresh = store.create(tenant_id="t-004", resource="orders")
    launched: list[str] = []
    for _ in range(3):
        launched += [r.tags["export/request_id"] for r in tick(dagster_resources)]
    assert fresh in launched


def test_start_rate_per_tenant(store, dagster_resources, cap):
    cap(100)
    ids = [store.create(tenant_id="t-001", resource="orders") for _ in range(5)]
    other = store.create(tenant_id="t-002", resource="orders")
    resources = {
        **dagster_resources,
        "export_settings": ExportSettings(
            bucket=dagster_resources["export_settings"].bucket,
            prefix=dagster_resources["export_settings"].prefix,
            tenant_starts_per_minute=2,
        ),
    }
    first = [r.tags["export/request_id"] for r in tick(resources)]
    assert first[:2] == [ids[0], other] or sorted(first) == sorted([ids[0], ids[1], other])
    assert sorted(first) == sorted([ids[0], ids[1], other])
    assert tick(resources) == []  # t-001 used its two starts of this minute; the rest wait
    assert all(store.get(i).status == "pending" for i in ids[2:])


# ------------------------------------------------------------- failures and the reaper


def test_failure_sensor_marks_the_row_failed_before_an_abort_that_raises(store, dagster_resources, stack_env):
    rid = store.create(tenant_id="t-007", resource="orders")
    store.mark_queued(rid, 1)
    store.mark_running(rid, "run-1", 10)
    broken_s3 = ExportS3(
        endpoint_url=stack_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="wrong",
        aws_secret_access_key="wrong",
        max_attempts=1,
    )
    run = dg.DagsterRun(
        job_name="tenant_export_job",
        run_id="r-final",
        tags={"export/request_id": rid, "tenant": "t-007", "dagster/will_retry": "false"},
    )
    record_run_failure(
        run,
        "export_files: S3 InvalidAccessKeyId at s3://exports-test/x",
        dagster_resources["source"],
        dagster_resources["notifier"],
        LOG,
        broken_s3,
        dagster_resources["export_settings"],
        code="storage_unavailable",
    )
    row = store.get(rid)
    assert row.status == "failed" and row.error_code == "storage_unavailable"
    assert "s3://" not in row.error


def test_reaper_resolves_canceled_and_vanished_runs(store, dagster_resources, s3_client, bucket, prefix):
    instance = dg.DagsterInstance.ephemeral()
    canceled = store.create(tenant_id="t-007", resource="orders")
    store.mark_queued(canceled, 1)
    run = instance.create_run_for_job(
        export_job_with(dagster_resources),
        run_config=export_run_config(tenant_id="t-007", resource="orders", request_id=canceled),
        tags={"export/request_id": canceled, "export/attempt": "1", "tenant": "t-007"},
    )
    instance.report_run_canceled(run)
    gone = store.create(tenant_id="t-008", resource="orders")
    store.mark_queued(gone, 1)
    store.mark_running(gone, "no-such-run", 10)
    folder = f"{prefix}/tenant=t-008/orders/{gone}/"
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=folder + "part-00001.csv.gz")
    alive = store.create(tenant_id="t-009", resource="orders")
    store.mark_queued(alive, 1)  # no run yet: the request sensor's, not the reaper's
    resolved = reap_unfinished_requests(
        instance,
        dagster_resources["source"],
        dagster_resources["notifier"],
        LOG,
        dagster_resources["s3"],
        dagster_resources["export_settings"],
        older_than_seconds=0,
    )
    assert resolved == 2
    row = store.get(canceled)
    assert row.status == "canceled" and row.error_code == "canceled"
    row = store.get(gone)
    assert row.status == "failed" and "no longer exists" in row.error
    assert store.get(alive).status == "queued"
    uploads = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=folder).get("Uploads", [])
    assert upload["UploadId"] not in [u["UploadId"] for u in uploads]


# ------------------------------------------------------------------ huge filters


def test_sensor_does_not_load_huge_filters(store, dagster_resources, pg, source_url):
    rid = store.create(tenant_id="t-001", resource="orders")
    # A row from before the CHECK existed: drop it for a moment, as an old database had none.
    pg.execute("ALTER TABLE export_requests DROP CONSTRAINT export_requests_size_check")
    try:
        pg.execute(
            "UPDATE export_requests SET filters = jsonb_build_object('status', repeat('p', 200000)) "
            "WHERE id = %s",
            [rid],
        )
    finally:
        migrate(source_url)
    good = store.create(tenant_id="t-002", resource="orders")
    (row,) = [r for r in RequestQueue.on(store.conn).to_launch() if r.id == rid]
    assert isinstance(row.filters, OversizedFilters) and row.filters.size > 200_000
    assert [r.tags["export/request_id"] for r in tick(dagster_resources)] == [good]
    failed = store.get(rid)
    assert failed.status == "failed" and failed.error_code == "invalid_request"
    assert "filters: at most 65536 bytes" in failed.error


# ------------------------------------------------------------- '|' in a tenant id


def test_pipe_in_tenant_id_is_refused_and_skipped(catalog, dagster_resources, pg, tmp_path):
    with pytest.raises(InvalidRequest, match=r"tenant_id.*'\|'"):
        build_request(catalog, tenant_id="acme|eu", resource="orders")
    pg.execute(
        "INSERT INTO tenants (id, name, plan, created_at) VALUES ('acme|eu', 'Acme EU', 'enterprise', now()) "
        "ON CONFLICT DO NOTHING"
    )
    try:
        with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
            with dg.build_schedule_context(
                instance=instance,
                scheduled_execution_time=datetime(2026, 12, 1, 2, 0, tzinfo=UTC),
                resources=dagster_resources,
            ) as context:
                requests = monthly_schedule(context)
                # A run request is one partition, or a range of one month's tenants (a batch).
                partitions = monthly_partitions("2024-01-01")
                keys = [
                    str(k)
                    for r in requests
                    for k in (
                        [r.partition_key]
                        if r.partition_key
                        else partitions.get_partition_keys_in_range(
                            dg.PartitionKeyRange(r.tags[tags.RANGE_START], r.tags[tags.RANGE_END]),
                            dynamic_partitions_store=instance,
                        )
                    )
                ]
            tenants = {key.split("|", 1)[1] for key in keys}
            assert "t-005" in tenants and "acme|eu" not in tenants
            assert not any("acme" in json.dumps(r.tags) for r in requests)
            with dg.build_sensor_context(instance=instance, resources=dagster_resources) as context:
                result = tenant_partitions_sensor(context)
            added = [k for r in result.dynamic_partitions_requests for k in r.partition_keys]
            assert "acme|eu" not in added
    finally:
        pg.execute("DELETE FROM tenants WHERE id = 'acme|eu'")


# ------------------------------------------------------------- S3 key length


def test_tenant_id_too_long_for_an_s3_key_is_refused(catalog):
    tenant = "ü" * 256  # 256 characters, 512 bytes of UTF-8, 1,536 percent-encoded
    with pytest.raises(InvalidRequest) as info:
        build_request(catalog, tenant_id=tenant, resource="orders")
    assert info.value.field == "tenant_id" and "1024" in str(info.value) and "512" in str(info.value)


# -------------------------------------------------------- file floor and cap


def test_rows_per_file_floor_and_file_cap(catalog):
    with pytest.raises(InvalidRequest, match="max_rows_per_file: must be at least 100"):
        build_request(catalog, tenant_id="t-001", resource="orders", max_rows_per_file=1)
    build_request(catalog, tenant_id="t-001", resource="orders", max_rows_per_file=100)
    with pytest.raises(InvalidRequest, match="at most 10,000 files"):
        check_file_count(10_000_000, 100)
    check_file_count(1_000_000, 100)


# ------------------------------------------------------------ validation gaps


@pytest.mark.parametrize(
    "tenant", ["t-\x85", "t-\u2028", "t-\u2029", "t-\u202e", "t-\u200b", "t-\ufeff", "t-\u00ad"]
)
def test_tenant_id_refuses_control_and_format_characters(catalog, tenant):
    with pytest.raises(InvalidRequest, match="tenant_id: must be printable"):
        build_request(catalog, tenant_id=tenant, resource="orders")


def test_export_id_and_dates_match_exactly(catalog):
    with pytest.raises(InvalidRequest, match="export_id"):
        build_request(catalog, tenant_id="t-001", resource="orders", export_id="abc\n")
    for text in ("2024-01-01ZZ", "2024-01-01Z+00:00", "20240101"):
        with pytest.raises(InvalidRequest, match="not an ISO 8601"):
            parse_instant(text, "filters.date_from")
    assert parse_instant("2024-01-01Z", "x") == datetime(2024, 1, 1, tzinfo=UTC)


# ---------------------------------------------------- errors and request_id ownership


def test_run_config_request_id_of_another_tenant_is_refused(store, dagster_resources):
    victim = store.create(tenant_id="t-002", resource="orders")
    result = run_export_job(
        run_config=export_run_config(tenant_id="t-001", resource="orders", request_id=victim),
        resources=dagster_resources,
        raise_on_error=False,
    )
    assert not result.success
    row = store.get(victim)
    assert row.status == "pending" and row.run_id is None and row.manifest_key is None


def test_tenants_read_short_coded_errors(store, dagster_resources):
    assert error_code(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")) == (
        "source_timeout"
    )
    from botocore.exceptions import EndpointConnectionError

    assert error_code(EndpointConnectionError(endpoint_url="http://127.0.0.1:9")) == "storage_unavailable"
    assert error_code(RuntimeError("x")) == "internal"
    rid = store.create(tenant_id="t-007", resource="orders")
    store.mark_queued(rid, 1)
    store.mark_running(rid, "run-1", 10)
    run = dg.DagsterRun(
        job_name="tenant_export_job", run_id="r", tags={"export/request_id": rid, "tenant": "t-007"}
    )
    record_run_failure(
        run,
        "dagster._core.errors.DagsterExecutionStepExecutionError: connection to 127.0.0.1:55432 failed",
        dagster_resources["source"],
        dagster_resources["notifier"],
        LOG,
    )
    row = store.get(rid)
    assert row.error_code == "internal" and "127.0.0.1" not in row.error and "dagster" not in row.error


def test_unknown_tenant_is_refused_by_the_sensor_and_by_count_rows(store, dagster_resources):
    rid = store.create(tenant_id="no-such-tenant", resource="orders")
    assert tick(dagster_resources) == []
    row = store.get(rid)
    assert row.status == "failed" and row.error_code == "invalid_request" and "is not a tenant" in row.error
    result = run_export_job(
        run_config=export_run_config(tenant_id="no-such-tenant", resource="orders"),
        resources=dagster_resources,
        raise_on_error=False,
    )
    assert not result.success
    assert "is not a tenant" in str(result.get_step_failure_events()[0].step_failure_data.error.message)


def test_idempotency_key_returns_the_same_request(store):
    key = str(uuid.uuid4())
    first = store.create(tenant_id="t-001", resource="orders", idempotency_key=key)
    assert store.create(tenant_id="t-001", resource="orders", idempotency_key=key) == first
