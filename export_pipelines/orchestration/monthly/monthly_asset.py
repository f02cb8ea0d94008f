# No `from __future__ import annotations` here: Dagster reads the asset's annotations at runtime.
"""`monthly_tenant_export_job`: the monthly dumps as ONE partitioned asset, `monthly_export`,
tenant x month, whose runs may cover several partitions (docs/data-team.md).

Why an asset: Dagster keeps a partitioned asset's status per partition from the materializations
and the runs that planned them, whatever run covered it, so a run that exports 25 tenants still
shows 25 partitions in the UI, each materialized or failed on its own, each re-runnable alone.
(A partitioned op job's status is per run, one run = one partition: batching there would hide
the partitions.) `BackfillPolicy.multi_run(EXPORT_MONTHLY_BATCH_SIZE)` makes Dagster's backfills
(the CLI's `dagster job backfill`, `export-pipelines backfill`, the UI's, the schedule's) cut the
selected partitions into runs of at most that many, each run a range of one month's tenants.
A run of a single partition (`dagster job launch --partition`, a re-execution) is a batch of one.

Per partition: export_month() (monthly_export.py); success → an AssetMaterialization of that
partition; failure → the others go on, and at the end the step fails naming the failed partitions,
so the run fails and exactly the partitions it planned but did not materialize show failed.
"""

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from export_pipelines.core.errors import InvalidRequest, Rejected
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.monthly.monthly_export import (
    MonthlyConfig,
    MonthOutcome,
    Services,
    export_month,
)
from export_pipelines.orchestration.monthly.partitions import monthly_partitions, previous_month
from export_pipelines.orchestration.op_failures import ERROR_CODE_KEY, TENANT_ERROR_KEY
from export_pipelines.orchestration.ops import configured_request
from export_pipelines.orchestration.resources import ExportS3, ExportSettings, SourceDatabase
from export_pipelines.orchestration.run_config import MONTHLY_OP
from export_pipelines.orchestration.run_page import human_size
from export_pipelines.settings import Settings

MONTHLY_JOB = "monthly_tenant_export_job"
MONTHLY_ASSET_KEY = dg.AssetKey([MONTHLY_OP])
# A stand-in tenant for checking a run's config alone (each partition's tenant is checked on its own).
CONFIG_CHECK_TENANT = "config-check"
# Links on a partition's materialization (the manifest lists them all).
MAX_LINKED_FILES = 5


def build_monthly_asset(settings: Settings) -> dg.AssetsDefinition:
    """Partitions from EXPORT_MONTHS_FROM; at most EXPORT_MONTHLY_BATCH_SIZE partitions per run."""

    class DeployedMonthlyConfig(MonthlyConfig):
        # The deployment's defaults (EXPORT_MONTHLY_RESOURCE, EXPORT_MONTHLY_FORMAT): a run needs no
        # config at all (schedule, backfills, `dagster job launch --partition`), and the launchpad
        # opens with them. (Dagster refuses a config mapping or a PartitionedConfig here: the job
        # is partitioned, and its runs may cover several partitions.)
        resource: str = settings.monthly_resource
        format: str = settings.monthly_format

    @dg.asset(
        key=MONTHLY_ASSET_KEY,
        partitions_def=monthly_partitions(settings.months_from),
        backfill_policy=dg.BackfillPolicy.multi_run(settings.monthly_batch_size),
        # Materializations are logged per partition that succeeded, never one for the whole run.
        output_required=False,
        kinds={"postgres", "s3"},
        description="A tenant's rows of one month (time_column inside it), as an export of that tenant: "
        "…/tenant={t}/{resource}/{YYYY-MM}/. Keys idempotent per partition.",
    )
    def monthly_export(
        context: dg.AssetExecutionContext,
        config: DeployedMonthlyConfig,
        source: SourceDatabase,
        s3: ExportS3,
        export_settings: ExportSettings,
    ) -> Iterator[dg.AssetMaterialization]:
        services = Services(source, s3, export_settings)
        keys = batch_keys(context)
        context.log.info(f"{len(keys)} partition(s): {', '.join(keys[:50])}")
        # The operator's config and months, once, before any partition or tenant row is touched:
        # an operator's mistake fails this run, never the tenants' rows or their notifications.
        try:
            check_batch(export_settings.catalog(), config, keys, datetime.now(UTC))
        except Rejected as exc:
            raise dg.Failure(
                description=f"the run's config or partitions are refused, nothing was exported: {exc}",
                metadata={ERROR_CODE_KEY: exc.code, "refused": str(exc)},
                allow_retries=False,
            ) from None
        failed: list[MonthOutcome] = []
        for key in keys:
            month, tenant = key.split("|", 1)  # "YYYY-MM-01|tenant" (dimensions sorted by name)
            outcome = export_month(context, services, config, tenant, month, alone=len(keys) == 1)
            if outcome.done is None:
                failed.append(outcome)
            else:
                yield materialization(outcome, key)
        if failed:
            first = failed[0]
            raise dg.Failure(
                description=f"{len(failed)} of {len(keys)} partition(s) failed: "
                + "; ".join(f"{o.key}: {o.code}: {o.error}" for o in failed[:20]),
                # The failure sensor's reading of a one-partition run (its row is failed already).
                metadata={
                    ERROR_CODE_KEY: first.code,
                    TENANT_ERROR_KEY: first.error,
                    "failed_partitions": ",".join(o.key for o in failed),
                },
                allow_retries=False,
            )

    return monthly_export


def check_batch(catalog: Catalog, config: MonthlyConfig, keys: list[str], now: datetime) -> None:
    """Refuse a monthly run whose config no partition could export (a misspelt column, an unknown
    format: the message names the field and the allowed values), or that covers a month that has
    not ended (a partial month would be exported under the month's name)."""
    current = now.astimezone(UTC).strftime("%Y-%m")
    unfinished = sorted({k.split("|", 1)[0][:7] for k in keys if k.split("|", 1)[0][:7] >= current})
    if unfinished:
        raise InvalidRequest(
            "partition",
            f"month {unfinished[0]} has not ended; a monthly export covers a finished month "
            f"(up to {previous_month(now)[:7]})",
        )
    # Tenant and month are the partition's: only the config's own fields are checked here.
    configured_request(catalog, config, CONFIG_CHECK_TENANT, {}, "config-check")


def batch_keys(context: dg.AssetExecutionContext) -> list[str]:
    """The run's partition keys. For a range run, from its range tags: Dagster 1.13.27's job
    backfills (the daemon's, of a MultiPartitionsDefinition under a multi-run BackfillPolicy) also
    stamp `dagster/partition/month` and `dagster/partition/tenant` of the backfill's FIRST
    partition on every range run, and `context.partition_keys` prefers those tags: every batch
    would export that one tenant. The range tags are what Dagster planned the run's partitions from."""
    start, end = context.run.tags.get(tags.RANGE_START), context.run.tags.get(tags.RANGE_END)
    if start and end and context.assets_def.partitions_def is not None:
        keys = context.assets_def.partitions_def.get_partition_keys_in_range(
            dg.PartitionKeyRange(start, end), dynamic_partitions_store=context.instance
        )
        return [str(k) for k in keys]
    return [str(k) for k in context.partition_keys]


def materialization(outcome: MonthOutcome, partition: str) -> dg.AssetMaterialization:
    """One partition's success, with what the one-partition graph showed on its run page."""
    done = outcome.done
    assert done is not None
    links = {f"file {n}": dg.MetadataValue.url(f.url) for n, f in enumerate(done.files[:MAX_LINKED_FILES], 1)}
    return dg.AssetMaterialization(
        asset_key=MONTHLY_ASSET_KEY,
        partition=partition,
        description=(
            f"{outcome.tenant}: {done.rows} rows, {human_size(done.bytes)}, {len(done.files)} file(s)"
        ),
        metadata={
            "tenant": outcome.tenant,
            "request_id": outcome.request_id,
            "rows": done.rows,
            "bytes": done.bytes,
            "size": human_size(done.bytes),
            "files": len(done.files),
            "folder": outcome.folder,
            "manifest_key": done.manifest_key,
            "manifest": dg.MetadataValue.url(done.manifest_url),
            "expires_at": done.expires_at.isoformat(),
            **links,
        },
    )


def build_monthly_job(settings: Settings) -> tuple[dg.AssetsDefinition, UnresolvedAssetJobDefinition]:
    """The asset and its job (the definitions resolve it with their resources).
    Resource and format from EXPORT_MONTHLY_RESOURCE / EXPORT_MONTHLY_FORMAT, changeable in the
    launchpad. A static config, not a PartitionedConfig: Dagster refuses those for runs of
    several partitions (nothing in it depends on the partition anyway)."""
    asset = build_monthly_asset(settings)
    job = dg.define_asset_job(
        MONTHLY_JOB,
        selection=[MONTHLY_ASSET_KEY],
        description="Tenant x month exports; a run covers up to EXPORT_MONTHLY_BATCH_SIZE partitions.",
        executor_def=dg.in_process_executor,
    )
    return asset, job


def monthly_job_with(settings: Settings, resources: Mapping[str, Any]) -> dg.JobDefinition:
    """The monthly job resolved with these resources, to execute in process (tests, demos)."""
    asset, job = build_monthly_job(settings)
    return dg.Definitions(assets=[asset], jobs=[job], resources=resources).resolve_job_def(MONTHLY_JOB)
