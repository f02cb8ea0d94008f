"""Tenant x month partitions, the monthly enterprise schedule, and re-running failed partitions only."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import dagster as dg
import openpyxl

from export_pipelines.orchestration.monthly.backfills import failed_partitions
from export_pipelines.orchestration.monthly.monthly_asset import monthly_job_with
from export_pipelines.orchestration.monthly.partitions import previous_month, tenant_partitions_sensor
from export_pipelines.orchestration.resources import ExportSettings
from export_pipelines.settings import Settings
from export_pipelines_tests.support.readback import csv_rows, read_manifest
from export_pipelines_tests.support.services import ENTERPRISE, code_location

CODE_LOCATION = code_location()
monthly_enterprise_export_schedule = CODE_LOCATION["monthly_enterprise_export_schedule"]


def test_previous_month():
    assert previous_month(datetime(2026, 12, 1, 2, tzinfo=UTC)) == "2026-11-01"
    assert previous_month(datetime(2027, 1, 1, 2, tzinfo=UTC)) == "2026-12-01"


def test_schedule_requests_previous_month_for_every_enterprise_tenant(dagster_resources, tmp_path):
    # build_schedule_context needs a persistent instance (the schedule adds dynamic partitions).
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2026, 12, 1, 2, 0, tzinfo=UTC),
            resources=dagster_resources,
        ) as context:
            requests = monthly_enterprise_export_schedule(context)
        tenants_partitions = sorted(instance.get_dynamic_partitions("tenants"))
    # One run of all five (EXPORT_MONTHLY_BATCH_SIZE 25): a key range over the five tenants, in
    # the order of the tenants partitions, which the schedule has just added in that order.
    assert tenants_partitions == ENTERPRISE
    (request,) = requests
    assert request.partition_key is None and request.run_config == {}  # the job's defaults
    assert request.tags == {
        "dagster/asset_partition_range_start": "2026-11-01|t-005",
        "dagster/asset_partition_range_end": "2026-11-01|t-big",
    }
    assert request.run_key == "2026-11-01|t-005..2026-11-01|t-big"
    assert monthly_enterprise_export_schedule.cron_schedule == "0 2 1 * *"
    assert monthly_enterprise_export_schedule.execution_timezone == "UTC"


def test_partitions_sensor_adds_every_tenant(dagster_resources, pg):
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(instance=instance, resources=dagster_resources) as context:
        result = tenant_partitions_sensor(context)
    (add,) = result.dynamic_partitions_requests
    tenants = [r[0] for r in pg.execute("SELECT id FROM tenants ORDER BY id")]
    assert sorted(add.partition_keys) == tenants


def test_schedule_batches_never_step_over_a_tenant_not_chosen():
    from export_pipelines.orchestration.monthly.partitions import tenant_batches

    ordered = ["a", "b", "c", "d", "e", "f", "g"]
    assert tenant_batches(ordered, ["a", "b", "c", "e", "f", "g"], 2) == [
        ["a", "b"],
        ["c"],
        ["e", "f"],
        ["g"],
    ]
    assert tenant_batches(ordered, ["g", "a"], 25) == [["a"], ["g"]]
    assert tenant_batches(ordered, [], 25) == []


def run_partition(instance, resources, key, settings=None):
    job = monthly_job_with(settings or Settings(), resources)
    return job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)


def manifest_key_of(result) -> str:
    (m,) = result.asset_materializations_for_node("monthly_export")
    return str(m.metadata["manifest_key"].value)


def test_partition_exports_that_tenant_and_month_only(dagster_resources, s3_client, bucket, prefix, pg):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("tenants", ["t-005"])
    result = run_partition(instance, dagster_resources, "2024-05-01|t-005")
    assert result.success
    manifest_key = manifest_key_of(result)
    assert manifest_key == f"{prefix}/tenant=t-005/orders/2024-05/manifest.json"
    _, rows = csv_rows(s3_client, bucket, read_manifest(s3_client, bucket, manifest_key))
    expected = pg.execute(
        "SELECT id::text FROM orders WHERE tenant_id = 't-005' AND created_at >= '2024-05-01' "
        "AND created_at < '2024-06-01' ORDER BY orders.id"
    ).fetchall()
    assert [r[0] for r in rows] == [e[0] for e in expected] and expected
    assert all(r[2].startswith("2024-05-") for r in rows)


def test_rerun_of_failed_partitions_only(dagster_resources, s3_client, bucket, prefix):
    instance = dg.DagsterInstance.ephemeral()
    tenants = ["t-005", "t-010", "t-015"]
    instance.add_dynamic_partitions("tenants", tenants)
    broken = {
        **dagster_resources,
        "export_settings": ExportSettings(bucket="no-such-bucket-for-t010", prefix=prefix),
    }
    keys = [f"2024-06-01|{t}" for t in tenants]
    for key in keys:
        result = run_partition(instance, broken if key.endswith("t-010") else dagster_resources, key)
        assert result.success == (not key.endswith("t-010"))
        if not result.success:  # not retried: a missing bucket is a configuration error
            (error,) = [e.step_failure_data.error for e in result.get_step_failure_events()]
            assert "NoSuchBucket" in error.message and "check EXPORT_BUCKET" in error.message
            assert "after 4 attempts" not in error.message
    assert failed_partitions(instance) == ["2024-06-01|t-010"]
    good_before = {
        t: s3_client.head_object(Bucket=bucket, Key=f"{prefix}/tenant={t}/orders/2024-06/_SUCCESS")[
            "LastModified"
        ]
        for t in ("t-005", "t-015")
    }
    for key in failed_partitions(instance):
        assert run_partition(instance, dagster_resources, key).success
    assert failed_partitions(instance) == []
    runs = instance.get_runs(dg.RunsFilter(job_name="monthly_tenant_export_job"))
    per_partition = {k: sum(r.tags.get("dagster/partition") == k for r in runs) for k in keys}
    assert per_partition == {"2024-06-01|t-005": 1, "2024-06-01|t-010": 2, "2024-06-01|t-015": 1}
    for t, modified in good_before.items():  # the good partitions were not exported again
        assert (
            s3_client.head_object(Bucket=bucket, Key=f"{prefix}/tenant={t}/orders/2024-06/_SUCCESS")[
                "LastModified"
            ]
            == modified
        )
    s3_client.head_object(Bucket=bucket, Key=f"{prefix}/tenant=t-010/orders/2024-06/_SUCCESS")


def test_monthly_format_from_the_environment(dagster_resources, s3_client, bucket, prefix, pg, monkeypatch):
    monkeypatch.setenv("EXPORT_MONTHLY_FORMAT", "xlsx")
    settings = Settings.from_env()  # as the code location builds the job at load time
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("tenants", ["t-005"])
    result = run_partition(instance, dagster_resources, "2024-05-01|t-005", settings)
    assert result.success
    manifest = read_manifest(s3_client, bucket, manifest_key_of(result))
    (f,) = manifest["files"]
    assert manifest["format"] == "xlsx" and f["key"].endswith("/tenant=t-005/orders/2024-05/part-00001.xlsx")
    workbook = openpyxl.load_workbook(
        io.BytesIO(s3_client.get_object(Bucket=bucket, Key=f["key"])["Body"].read())
    )
    ids = [r[0] for r in workbook.active.iter_rows(min_row=2, values_only=True)]
    expected = pg.execute(
        "SELECT id FROM orders WHERE tenant_id = 't-005' AND created_at >= '2024-05-01' "
        "AND created_at < '2024-06-01' ORDER BY id"
    ).fetchall()
    assert ids == [e[0] for e in expected] and ids
    assert f["sheets"] == [{"name": "Sheet1", "rows": len(ids)}]
