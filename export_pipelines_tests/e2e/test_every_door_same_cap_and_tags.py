"""One per-tenant cap for every door, and every run tagged the same way.

A real daemon with the project's dagster.yaml; the same tenant is launched from several doors at
once (a request row for the sensor, `dagster job launch` as the launchpad does, `export-pipelines
demo`, a backfill of two partitions) and its runs never overlap; another tenant's run is not held back by them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from export_pipelines.orchestration import tags
from export_pipelines.orchestration.instance.run_coordinator import export_tags
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines_tests.support.daemon import ROOT, running_daemon
from export_pipelines_tests.support.s3_fault_proxy import S3FaultProxy, delay, op

TENANT = "t-big"  # enterprise in the demo data, and big: its runs last long enough to overlap
OTHER = "t-010"
BIN = Path(sys.executable).parent
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def test_export_tags_from_config_partition_and_sensor():
    config = export_run_config(tenant_id="t-1", resource="orders", format="parquet", request_id="r-1")
    assert export_tags({}, config, "run-1") == {
        tags.TENANT: "t-1",
        tags.RESOURCE: "orders",
        tags.FORMAT: "parquet",
        tags.EXPORT_ID: "r-1",
    }
    # An ad-hoc run's export id is its (root) run id; the format defaults as ExportConfig's does.
    assert export_tags({}, export_run_config(tenant_id="t-1", resource="orders"), "run-1") == {
        tags.TENANT: "t-1",
        tags.RESOURCE: "orders",
        tags.FORMAT: "csv",
        tags.EXPORT_ID: "run-1",
    }
    # A partition decides the tenant and the export id (the month), as count_rows does.
    partitioned = export_tags(
        {"dagster/partition": "2026-10-01|t-2"}, export_run_config(tenant_id="", resource="orders")
    )
    assert partitioned[tags.TENANT] == "t-2" and partitioned[tags.EXPORT_ID] == "2026-10"
    # The config decides: a tenant tag naming another tenant cannot take a run out of its cap.
    assert export_tags({tags.TENANT: "t-other"}, config, "run-1")[tags.TENANT] == "t-1"
    # The janitor is not an export.
    assert export_tags({}, {}, "run-1") == {}


# Every export's upload is held this long, so a run lasts longer than the daemon takes to start
# the next (about 7 s a run here): uncapped runs of one tenant would then run side by side.
HOLD_SECONDS = 12


@pytest.fixture(scope="module")
def daemon(stack_env, source_url, bucket, tmp_path_factory) -> Iterator[tuple[dict[str, str], Path]]:
    home = tmp_path_factory.mktemp("dagster_home_doors")
    with S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as proxy:
        proxy.add_fault(op("CreateMultipartUpload"), delay(HOLD_SECONDS), times=None)
        with running_daemon(
            stack_env, source_url, bucket, home, "dagster_doors", AWS_ENDPOINT_URL=proxy.endpoint_url
        ) as env:
            yield env, home


def dagster_cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    """A `dagster job ...` command, started (the doors are opened at the same time)."""
    return subprocess.Popen(
        [str(BIN / "dagster"), "job", *args, "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def launch(env: dict[str, str], tenant: str, run_tags: dict[str, str] | None = None) -> subprocess.Popen:
    """As the launchpad does: the run config, and the tags the user typed, if any (GraphQL
    launchRun → submit_run)."""
    config = export_run_config(tenant_id=tenant, resource="orders", format="csv")
    args = ["launch", "-j", "tenant_export_job", "--config-json", json.dumps(config)]
    return dagster_cli(env, *args, *(["--tags", json.dumps(run_tags)] if run_tags else []))


def overlaps(runs: list[dg.RunRecord]) -> int:
    """The most runs that were running at the same moment."""
    edges = sorted(
        [(r.start_time, 1) for r in runs] + [(r.end_time, -1) for r in runs], key=lambda e: (e[0], e[1])
    )
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_one_tenant_cap_for_every_door(daemon, store, monkeypatch):
    env, home = daemon
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", env["DAGSTER_POSTGRES_URL"])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("tenants", [TENANT, OTHER])
        doors = [
            # Launchpad door, with a tenant tag naming another tenant: the config decides.
            launch(env, TENANT, {tags.TENANT: "t-elsewhere"}),
            dagster_cli(  # backfill door: two partitions of the same tenant
                env,
                "backfill",
                "-j",
                "monthly_tenant_export_job",
                "--partitions",
                f"2024-05-01|{TENANT},2024-06-01|{TENANT}",
                "--noprompt",
            ),
            subprocess.Popen(  # CLI door: with a daemon running, through the queue
                [str(BIN / "export-pipelines"), "demo", "--tenant", TENANT, "--timeout", "500"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            ),
            launch(env, OTHER),
        ]
        request_id = store.create(tenant_id=TENANT, resource="orders", format="csv")  # sensor door
        for door in doors:
            output = door.communicate(timeout=600)[0]
            assert door.returncode == 0, output
        deadline = time.monotonic() + 600
        while True:
            runs = instance.get_run_records()
            if len(runs) >= 6 and all(r.dagster_run.status in DONE for r in runs):
                break
            assert time.monotonic() < deadline, [(r.dagster_run.tags, r.dagster_run.status) for r in runs]
            time.sleep(1)
    statuses = {r.dagster_run.run_id: r.dagster_run.status for r in runs}
    assert set(statuses.values()) == {dg.DagsterRunStatus.SUCCESS}, statuses
    # Which tenant a run exported, read from its config or partition (not from the tags under test).
    mine = [r for r in runs if exported_tenant(r.dagster_run) == TENANT]
    # sensor, launchpad, CLI demo, 2 partitions
    assert len(mine) == 5, [r.dagster_run.tags for r in runs]
    # The cap: never two of the tenant's runs at once.
    assert overlaps(mine) == 1, [(r.start_time, r.end_time) for r in mine]
    assert store.get(request_id).status == "succeeded"
    # The other tenant was not held back behind the tenant's queue: it started before that ended.
    (other,) = [r for r in runs if exported_tenant(r.dagster_run) == OTHER]
    assert other.start_time < max(r.end_time for r in mine)
    # Item 6: every door's run shows tenant, resource, format and export id.
    for record in runs:
        run_tags = record.dagster_run.tags
        assert run_tags.get(tags.TENANT) == exported_tenant(record.dagster_run), run_tags
        assert run_tags.get(tags.RESOURCE) == "orders" and run_tags.get(tags.FORMAT) == "csv", run_tags
        assert run_tags.get(tags.EXPORT_ID), run_tags
    months = sorted(
        r.dagster_run.tags[tags.EXPORT_ID] for r in mine if "dagster/partition" in r.dagster_run.tags
    )
    assert months == ["2024-05", "2024-06"]


def exported_tenant(run: dg.DagsterRun) -> str:
    partition = run.tags.get("dagster/partition", "")
    if "|" in partition:
        return partition.split("|", 1)[1]
    return run.run_config["ops"]["count_rows"]["config"]["tenant_id"]
