"""One run of monthly_tenant_export_job exports several tenant x month partitions
(a range, as Dagster's backfills cut them under the asset's BackfillPolicy), and each partition
keeps its own outcome: bytes, request row, materialization, failed status, re-run alone."""

from __future__ import annotations

import dagster as dg
from psycopg.rows import dict_row

from export_pipelines.core.requests.request_row import monthly_request_id
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.orchestration.instance.run_coordinator import export_tags
from export_pipelines.orchestration.monthly.backfills import failed_partitions
from export_pipelines.orchestration.monthly.monthly_asset import MONTHLY_ASSET_KEY, monthly_job_with
from export_pipelines.settings import Settings
from export_pipelines_tests.support.readback import csv_rows, read_manifest

MONTH = "2024-05-01"
# In the order the tenants partitions get them: a range from the first to the last covers all.
GOOD = ["t-005", "t-010", "t-015"]
GONE = "t-gone"  # a partition whose tenant is not in the tenants table: that partition fails
RANGE_TAGS = {
    "dagster/asset_partition_range_start": f"{MONTH}|t-005",
    "dagster/asset_partition_range_end": f"{MONTH}|t-015",
}


def pg_ids(pg, tenant: str) -> list[str]:
    rows = pg.execute(
        "SELECT id::text FROM orders WHERE tenant_id = %s AND created_at >= %s AND created_at < %s",
        [tenant, f"{MONTH}T00:00:00+00:00", "2024-06-01T00:00:00+00:00"],
    ).fetchall()
    return sorted(r[0] for r in rows)


def s3_ids(s3_client, bucket, prefix, tenant: str) -> list[str]:
    key = f"{prefix}/tenant={tenant}/orders/{MONTH[:7]}/manifest.json"
    _, rows = csv_rows(s3_client, bucket, read_manifest(s3_client, bucket, key))
    return sorted(r[0] for r in rows)


def clear_rows(source_url: str, tenants: list[str]) -> None:
    ids = [monthly_request_id(t, "orders", MONTH[:7]) for t in tenants]
    with RequestStore(source_url).migrate_once() as conn:
        conn.execute("DELETE FROM export_deliveries WHERE request_id = ANY(%s::uuid[])", [ids])
        conn.execute("DELETE FROM export_requests WHERE id = ANY(%s::uuid[])", [ids])


def test_batch_run_isolates_a_failing_tenant_and_reruns_one_alone(
    dagster_resources, source_url, s3_client, bucket, prefix, pg
):
    tenants = [GOOD[0], GONE, *GOOD[1:]]
    clear_rows(source_url, tenants)
    job = monthly_job_with(Settings(), dagster_resources)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("tenants", tenants)

    # As the daemon's job backfill tags a range run: with the dimension tags of the backfill's first
    # partition too (Dagster 1.13.27), which context.partition_keys would prefer (monthly_asset.py).
    first_partition_tags = {"dagster/partition/month": MONTH, "dagster/partition/tenant": "t-001"}
    result = job.execute_in_process(
        instance=instance, tags={**RANGE_TAGS, **first_partition_tags}, raise_on_error=False
    )

    # One run, four partitions: the three good ones exported and materialized, the gone one failed.
    assert not result.success
    assert len(instance.get_runs()) == 1
    materialized = {
        m.partition for m in result.asset_materializations_for_node("monthly_export") if m.partition
    }
    assert materialized == {f"{MONTH}|{t}" for t in GOOD}
    assert instance.get_materialized_partitions(MONTHLY_ASSET_KEY) == materialized
    assert failed_partitions(instance) == [f"{MONTH}|{GONE}"]
    for tenant in GOOD:
        assert s3_ids(s3_client, bucket, prefix, tenant) == pg_ids(pg, tenant) != []
    with pg.cursor(row_factory=dict_row) as cur:
        rows = {
            r["tenant_id"]: r
            for r in cur.execute(
                "SELECT * FROM export_requests WHERE origin = 'monthly' AND export_id = %s "
                "AND tenant_id = ANY(%s)",
                [MONTH[:7], tenants],
            )
        }
    assert {t: rows[t]["status"] for t in tenants} == {
        **{t: "succeeded" for t in GOOD},
        GONE: "failed",
    }
    assert rows[GONE]["error_code"] == "invalid_request"
    assert {rows[t]["run_id"] for t in tenants} == {result.run_id}
    # A batch run carries no row's tags (it serves several): the sensors leave it to the run.
    run = instance.get_run_by_id(result.run_id)
    assert "export/request_id" not in run.tags

    # Re-running one partition alone (launchpad, `dagster job launch --partition`, backfill of one
    # key): exports that tenant again, takes over its row, and is tagged like a request's run.
    again = job.execute_in_process(partition_key=f"{MONTH}|t-010", instance=instance)
    assert again.success
    rid = monthly_request_id("t-010", "orders", MONTH[:7])
    row = pg.execute("SELECT status, attempt, run_id FROM export_requests WHERE id = %s", [rid]).fetchone()
    assert row == ("succeeded", 2, again.run_id)
    assert instance.get_run_by_id(again.run_id).tags["export/request_id"] == rid
    assert s3_ids(s3_client, bucket, prefix, "t-010") == pg_ids(pg, "t-010")
    assert failed_partitions(instance) == [f"{MONTH}|{GONE}"]  # still failed: nobody fixed it


def test_run_tags_of_a_batch():
    """What the per-tenant cap sees: a one-tenant range keeps its tenant; a range over several
    tenants gets one value of its own (a batch never runs two exports of one tenant)."""
    config = {"ops": {"monthly_export": {"config": {"resource": "orders", "format": "csv"}}}}
    one = export_tags(
        {
            "dagster/asset_partition_range_start": "2024-05-01|t-005",
            "dagster/asset_partition_range_end": "2024-06-01|t-005",
        },
        config,
    )
    assert one["tenant"] == "t-005" and one["export/resource"] == "orders"
    assert one["export/id"] == "2024-05..2024-06"
    many = export_tags(RANGE_TAGS, config)
    assert many["tenant"] == "monthly batch 2024-05-01|t-005..2024-05-01|t-015"
    assert many["export/id"] == "2024-05"
    single = export_tags({"dagster/partition": "2024-05-01|t-005"}, config)
    assert single["tenant"] == "t-005" and single["export/id"] == "2024-05"
