"""The run queue with one tagging rule for every door (docs/operations.md).

Dagster's `QueuedRunCoordinator` limits runs per unique value of the `tenant` tag, but only runs
that carry the tag: the request sensor and the schedule set it, the launchpad, `dagster job
launch`, backfills and re-executions did not, so their runs slipped past the per-tenant cap. Every
door goes through `instance.submit_run` → this coordinator, so the tags are derived here, from
the run's own config or partition key, right before the run is queued; the dequeuer then sees
them. Also the data team's view: every run shows tenant, resource, format and export id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import DagsterRun
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext

from export_pipelines.orchestration import tags
from export_pipelines.orchestration.run_config import ENTRY_OP, MONTHLY_OP
from export_pipelines.settings import Settings

# ExportConfig's defaults, for runs whose config leaves them out.
DEFAULT_FORMAT = "csv"


def export_tags(
    run_tags: Mapping[str, str], run_config: Mapping[str, Any] | None, run_id: str | None = None
) -> dict[str, str]:
    """The tags every export run carries, from its run config and partition key(s). Empty when the
    run is not an export (the janitor). They override tags the submitter set: a launchpad user's
    `tenant` tag naming another tenant must not take the run out of its tenant's cap.
    `run_id`: the export id of an ad-hoc run without request_id (as count_rows names it).

    A monthly run covering several partitions (a range "YYYY-MM-01|t-a".."YYYY-MM-01|t-b", see
    monthly_asset.py) is tagged with the tenant when the range holds one tenant (several months),
    else with a value of its own, "monthly batch <start>..<end>": the cap of one run per value
    then limits that batch to one run, and the batch exports its tenants one after another."""
    ops = (run_config or {}).get("ops") or {}
    entry = None
    if isinstance(ops, Mapping):
        entry = ops.get(ENTRY_OP) or ops.get(MONTHLY_OP)
    config = entry.get("config") if isinstance(entry, Mapping) else None
    partition = run_tags.get(tags.PARTITION, "")
    start, end = run_tags.get(tags.RANGE_START, ""), run_tags.get(tags.RANGE_END, "")
    if not isinstance(config, Mapping) and "|" not in partition and "|" not in start:
        return {}
    config = dict(config) if isinstance(config, Mapping) else {}
    if "|" in partition or "|" in start:
        # A monthly run's config may leave resource and format to the job's defaults (schedule,
        # backfills: run config {}), which are the deployment's settings (monthly_asset.py).
        deployed = Settings.from_env()
        config = {"resource": deployed.monthly_resource, "format": deployed.monthly_format, **config}
    derived = {
        tags.TENANT: str(config.get("tenant_id") or ""),
        tags.RESOURCE: str(config.get("resource") or ""),
        tags.FORMAT: str(config.get("format") or DEFAULT_FORMAT),
    }
    export_id = config.get("request_id") or run_id
    if "|" in partition:
        # The partition decides tenant and month (the export id is the month).
        month, tenant = partition.split("|", 1)
        derived[tags.TENANT], export_id = tenant, month[:7]
    elif "|" in start and "|" in end:
        (first_month, first), (last_month, last) = start.split("|", 1), end.split("|", 1)
        derived[tags.TENANT] = first if first == last else f"monthly batch {start}..{end}"
        export_id = first_month[:7] if first_month == last_month else f"{first_month[:7]}..{last_month[:7]}"
    if export_id:
        derived[tags.EXPORT_ID] = str(export_id)
    return derived


def inherited_result_cleared(run_tags: Mapping[str, str]) -> dict[str, str]:
    """A retry or re-execution is created with its parent's tags, the parent's outcome, summary and
    link among them (run_page.result_tags): blanked until this run ends and sets its own (tags can be
    overwritten, never removed)."""
    inherited = [key for key in tags.RESULT_TAGS if run_tags.get(key)]
    if not inherited:
        return {}
    return {key: "" for key in inherited} | {tags.OUTCOME: "pending (a retry or re-execution)"}


class TenantRunCoordinator(QueuedRunCoordinator):
    """`QueuedRunCoordinator` that tags every export run with its tenant (and resource, format,
    export id) before queueing it, whichever door submitted it. Configured in dagster.yaml and
    deploy/celery/dagster.yaml with the same config as the stock coordinator."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        derived = export_tags(run.tags, run.run_config, run.root_run_id or run.run_id)
        new_tags = {key: value for key, value in derived.items() if run.tags.get(key) != value}
        new_tags.update(inherited_result_cleared(run.tags))
        if new_tags:
            self._instance.add_run_tags(run.run_id, new_tags)
            run = run.with_tags({**run.tags, **new_tags})
            context = SubmitRunContext(run, context.workspace)
        return super().submit_run(context)
