"""Monthly batches through a real dagster-daemon: ONE backfill of a month (what `export-pipelines
backfill` hands the daemon) runs several tenants' partitions in one run; every tenant's bytes in
S3 are its rows of the month in PostgreSQL; a tenant failing inside the batch leaves the others
materialized and itself a failed partition. (One partition re-run alone: test_monthly_batch.py in
process, and test_doors.py's one-partition backfill runs through a daemon.)"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg

from export_pipelines.orchestration.monthly.backfills import failed_partitions, launch_backfill
from export_pipelines.orchestration.monthly.monthly_asset import MONTHLY_ASSET_KEY
from export_pipelines_tests.support.daemon import ROOT, running_daemon
from export_pipelines_tests.support.readback import csv_rows, read_manifest

MONTH = "2024-04-01"
GONE = "t-gone-monthly"  # a partition whose tenant is not in the tenants table


def wait_until_all_ended(instance: dg.DagsterInstance, keys: list[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = set(failed_partitions(instance, month=MONTH)) | instance.get_materialized_partitions(
            MONTHLY_ASSET_KEY
        )
        runs = instance.get_runs()
        if set(keys) <= ended and runs and all(r.is_finished for r in runs):
            return
        time.sleep(1)
    raise AssertionError(
        f"not all of {keys} ended: {[(r.run_id, r.status, r.tags) for r in instance.get_runs()]}"
    )


def test_one_backfill_batches_tenants_and_isolates_a_failure(
    stack_env, source_url, bucket, s3_client, pg, tmp_path: Path, monkeypatch
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    # PYTHONPATH: the daemon's run coordinator from this checkout, not from wherever the package
    # is installed (a git worktree shares the main checkout's editable install).
    with running_daemon(
        stack_env,
        source_url,
        bucket,
        home,
        "dagster_monthly_batch",
        EXPORT_MONTHLY_BATCH_SIZE="4",
        PYTHONPATH=str(ROOT),
    ) as env:
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", env["DAGSTER_POSTGRES_URL"])
        with dg.DagsterInstance.from_config(str(home)) as instance:
            real = [r[0] for r in pg.execute("SELECT id FROM tenants ORDER BY id")]
            # The gone tenant last, whoever (this test or the tenants sensor) added the others.
            instance.add_dynamic_partitions("tenants", [*real, GONE])
            ordered = instance.get_dynamic_partitions("tenants")
            assert ordered[-1] == GONE
            tenants = ordered[-4:]  # three real tenants and the gone one: one range, one run
            keys = [f"{MONTH}|{t}" for t in tenants]
            launch_backfill(instance, keys, workspace=ROOT / "workspace.yaml", print_fn=lambda _: None)
            wait_until_all_ended(instance, keys)

            (run,) = instance.get_runs()  # four partitions, one run
            assert run.status == dg.DagsterRunStatus.FAILURE
            assert run.tags["dagster/asset_partition_range_start"] == keys[0]
            assert run.tags.get("tenant") == f"monthly batch {keys[0]}..{keys[-1]}", run.tags
            good = [t for t in tenants if t != GONE]
            assert instance.get_materialized_partitions(MONTHLY_ASSET_KEY) == {f"{MONTH}|{t}" for t in good}
            assert failed_partitions(instance) == [f"{MONTH}|{GONE}"]
            for tenant in good:
                key = f"{env['EXPORT_PREFIX']}/tenant={tenant}/orders/{MONTH[:7]}/manifest.json"
                _, rows = csv_rows(s3_client, bucket, read_manifest(s3_client, bucket, key))
                expected = pg.execute(
                    "SELECT id::text FROM orders WHERE tenant_id = %s AND created_at >= %s "
                    "AND created_at < %s",
                    [tenant, f"{MONTH}T00:00:00+00:00", "2024-05-01T00:00:00+00:00"],
                ).fetchall()
                assert sorted(r[0] for r in rows) == sorted(e[0] for e in expected) != []
