"""The data team's monthly path: which partitions to (re-)run, checked, and ONE Dagster backfill of
exactly those (docs/data-team.md). Never an empty partition list: `dagster job backfill` reads an
empty `--partitions` as "every partition"."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg

from export_pipelines.core.errors import InvalidRequest

MONTHLY_JOB = "monthly_tenant_export_job"
# The repository Dagster makes of the code location's one Definitions object.
REPOSITORY = "__repository__"
# The jobs whose partitions are tenant x month keys ("YYYY-MM-01|tenant").
PARTITIONED_JOBS = (MONTHLY_JOB,)
WORKSPACE = Path(__file__).resolve().parents[3] / "workspace.yaml"
_MONTH = re.compile(r"(\d{4})-(\d{2})(?:-01)?")


def parse_month(text: str, flag: str = "--month") -> str:
    """'YYYY-MM' or 'YYYY-MM-01' → 'YYYY-MM-01' (the month part of a partition key)."""
    match = _MONTH.fullmatch(text.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise InvalidRequest(flag, f"must be a month as YYYY-MM (e.g. 2026-10), got {text!r}")
    return f"{match.group(1)}-{match.group(2)}-01"


def check_job(job_name: str, flag: str = "--job") -> str:
    if job_name not in PARTITIONED_JOBS:
        raise InvalidRequest(flag, f"must be one of: {', '.join(PARTITIONED_JOBS)}; got {job_name!r}")
    return job_name


def check_month_in_range(month: str, months_from: str, today: str, flag: str = "--month") -> None:
    """The monthly job's partitions run from EXPORT_MONTHS_FROM to the last finished month: the
    current month has not ended (a partial month would be exported under its name)."""
    first = months_from[:7] + "-01"
    current = today[:7] + "-01"
    if month >= current:
        raise InvalidRequest(
            flag,
            f"month {month[:7]} has not ended; a monthly export covers a finished month (up to "
            f"{previous_month_of(current)[:7]}), got {month[:7]}",
        )
    if month < first:
        raise InvalidRequest(
            flag,
            f"must be from {first[:7]} (EXPORT_MONTHS_FROM) to {previous_month_of(current)[:7]}, "
            f"got {month[:7]}",
        )


def previous_month_of(month: str) -> str:
    """'YYYY-MM-01' of the month before 'YYYY-MM-01'."""
    year, number = int(month[:4]), int(month[5:7])
    return f"{year - (number == 1)}-{(number - 2) % 12 + 1:02d}-01"


def failed_partitions(
    instance: dg.DagsterInstance, job_name: str = MONTHLY_JOB, month: str | None = None
) -> list[str]:
    """Partition keys ('YYYY-MM-01|tenant') that failed: planned by a run that failed or was
    canceled, and not materialized since, as the UI's partition view shows them. Per partition,
    not per run: one run of the monthly job covers several partitions (monthly_asset.py), and only
    those it did not export count. Runs from before the job was an asset (one partition per run,
    no materialization events) count by their own status, for partitions the asset never saw."""
    from export_pipelines.orchestration.monthly.monthly_asset import MONTHLY_ASSET_KEY

    bad = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    storage = instance.event_log_storage
    attempts = storage.get_latest_asset_partition_materialization_attempts_without_materializations(
        MONTHLY_ASSET_KEY
    )
    run_ids = list({run_id for run_id, _ in attempts.values()})
    # (An empty run_ids filter would mean every run.)
    runs = {r.run_id: r for r in instance.get_runs(dg.RunsFilter(run_ids=run_ids))} if run_ids else {}
    failed = {key for key, (run_id, _) in attempts.items() if run_id in runs and runs[run_id].status in bad}
    seen = set(attempts) | instance.get_materialized_partitions(MONTHLY_ASSET_KEY)
    legacy = instance.get_run_partition_data(dg.RunsFilter(job_name=job_name))
    failed |= {p.partition for p in legacy if p.status in bad and p.partition not in seen}
    return sorted(p for p in failed if month is None or p.startswith(f"{month}|"))


def launch_backfill(
    instance: dg.DagsterInstance,
    partition_keys: Sequence[str],
    *,
    job_name: str = MONTHLY_JOB,
    workspace: Path = WORKSPACE,
    print_fn: Callable[[str], None] = print,
    ui_url: str | None = None,
) -> str:
    """ONE Dagster backfill (a PartitionBackfill the UI lists) of exactly these partitions, handed
    to the daemon's backfill loop: that loop cuts them into runs as the job's BackfillPolicy says
    (up to EXPORT_MONTHLY_BATCH_SIZE partitions per run, monthly_asset.py), and queues them like
    any other run (tenant cap included). `dagster job backfill` would not do: it submits one run
    per partition itself, whatever the policy. This is the backfill the UI's dialog makes.

    Written through the instance API alone: the daemon finds the job's partition set by the code
    location's and repository's names (from workspace.yaml), so no code server is started here (it
    took ~20 s). `ui_url`: the Dagster UI, to print the backfill's page. Returns the backfill id."""
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.remote_origin import RemotePartitionSetOrigin, RemoteRepositoryOrigin
    from dagster._core.remote_representation.external_data import partition_set_snap_name_for_job_name
    from dagster._core.utils import make_new_backfill_id
    from dagster._core.workspace.load import location_origins_from_yaml_paths
    from dagster._time import get_current_timestamp

    if not partition_keys:  # an empty list would mean every partition to Dagster
        raise ValueError("launch_backfill needs at least one partition key")
    (location,) = location_origins_from_yaml_paths([str(workspace)])
    backfill = PartitionBackfill(
        backfill_id=make_new_backfill_id(),
        partition_set_origin=RemotePartitionSetOrigin(
            repository_origin=RemoteRepositoryOrigin(location, REPOSITORY),
            partition_set_name=partition_set_snap_name_for_job_name(job_name),
        ),
        status=BulkActionStatus.REQUESTED,
        partition_names=list(partition_keys),
        from_failure=False,
        reexecution_steps=None,
        tags={},
        backfill_timestamp=get_current_timestamp(),
    )
    instance.add_backfill(backfill)
    print_fn(
        f"backfill {backfill.backfill_id} of {len(partition_keys)} partition(s) requested; "
        "the dagster-daemon launches its runs (several partitions per run)"
    )
    if ui_url:
        print_fn(f"follow it in the Dagster UI: {backfill_url(ui_url, backfill.backfill_id)}")
    return backfill.backfill_id


def backfill_url(ui_url: str, backfill_id: str) -> str:
    """The backfill's page in the Dagster UI (Dagster 1.13's route: /runs/b/<id>)."""
    return f"{ui_url.rstrip('/')}/runs/b/{backfill_id}"
