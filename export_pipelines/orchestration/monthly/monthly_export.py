"""One tenant x month export inside a monthly batch run (monthly_asset.py): what count_rows →
export_files → finalize → notify do for one partition, as one function, so a run can export
several tenants one after another and keep each one's outcome apart.

Same semantics as the one-partition graph: keys idempotent per partition (export id = the month),
the month's request row (docs/data-team.md), checkpoints (a retry
continues the cut and the parts of an earlier attempt), notification through the delivery table.
A failure is final for that tenant only: its row failed, the tenant told, its open uploads
aborted; the caller goes on with the next tenant.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import dagster as dg

from export_pipelines.core.delivery.notices import CANCELED, FAILED
from export_pipelines.core.engine.manifest import finalize_export
from export_pipelines.core.errors import ExportError, TransientError, error_code, tenant_message
from export_pipelines.core.requests.monthly_rows import MonthlyRows
from export_pipelines.core.requests.request_row import monthly_request_id
from export_pipelines.core.requests.tenant_settings import targets as tenant_targets
from export_pipelines.core.results import ExportProgress, FinalizedExport
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.monthly.partitions import month_range
from export_pipelines.orchestration.notify_op import abort_uploads_logged, notify_row, record_success
from export_pipelines.orchestration.op_failures import NETWORK_RETRY
from export_pipelines.orchestration.ops import (
    RunPlan,
    configured_request,
    plan_request,
    write_export,
)
from export_pipelines.orchestration.resources import ExportS3, ExportSettings, SourceDatabase


class MonthlyConfig(dg.Config):
    """What every partition of a monthly run exports (tenant and month come from the partition)."""

    resource: str
    # csv | csv_excel | jsonl | json | parquet | xlsx (docs/formats.md); default EXPORT_MONTHLY_FORMAT.
    format: str = "csv"
    compression: str | None = None
    columns: list[str] | None = None
    max_rows_per_file: int | None = None
    link_expiry_hours: int = 24


CANCELED_MESSAGE = "the export was canceled through the export API"


class CanceledThroughApi(ExportError):
    """The month's row got a cancel request (the export API's DELETE) while its batch ran."""

    code = "canceled"


@dataclass(frozen=True)
class MonthOutcome:
    """One partition's result: `done` when it succeeded, else the code and short message."""

    key: str
    tenant: str
    request_id: str
    done: FinalizedExport | None = None
    folder: str = ""
    code: str = ""
    error: str = ""


@dataclass(frozen=True)
class Services:
    source: SourceDatabase
    s3: ExportS3
    settings: ExportSettings


def export_month(
    context: dg.AssetExecutionContext,
    services: Services,
    config: MonthlyConfig,
    tenant: str,
    month: str,
    *,
    alone: bool,
) -> MonthOutcome:
    """Export `tenant`'s rows of `month` ('YYYY-MM-01'); never raises for the tenant's own failure
    (only an interrupt, e.g. the run being terminated, goes through). `alone`: the run exports this
    partition only, so it carries the row's tags like a request's run (the failure sensor, the
    reaper and the cancel sensor find the row through them)."""
    key = f"{month}|{tenant}"
    store = services.source.requests()
    rid = monthly_request_id(tenant, config.resource, month[:7])
    before = store.get(rid)
    if before is not None and before.status == "canceled" and same_run_group(context, before.run_id):
        # Canceled while it waited in this batch (or before this run's retry): do not start it again
        # (the upsert would take the row on as a new attempt).
        return _ended(
            context,
            services,
            key,
            tenant,
            rid,
            "",
            CanceledThroughApi("the export was canceled through the export API"),
        )
    filters = dict(zip(("date_from", "date_to"), month_range(month), strict=True))
    MonthlyRows.on(store.conn).upsert(
        tenant_id=tenant,
        resource=config.resource,
        month=month[:7],
        format=config.format,
        compression=config.compression,
        filters=filters,
        columns=config.columns,
        run_id=context.run.run_id,
    )
    if alone:
        row = store.get(rid)
        context.instance.add_run_tags(
            context.run.run_id, {tags.REQUEST_ID: rid, tags.ATTEMPT: str(row.attempt if row else 1)}
        )
    folder = ""
    attempts = NETWORK_RETRY.max_retries + 1
    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            run_plan = _plan(context, services, config, tenant, month[:7], filters, rid, alone)
            folder = run_plan.plan.location.folder
            done = _write(context, services, run_plan, abort_on_error=last)
            if not record_success(context.log, services.source, run_plan, done):
                raise CanceledThroughApi(CANCELED_MESSAGE)
            return MonthOutcome(key, tenant, rid, done=done, folder=folder)
        except TransientError as exc:
            if last:
                return _ended(context, services, key, tenant, rid, folder, exc)
        except ExportError as exc:  # invalid request, configuration, canceled: no attempt can succeed
            return _ended(context, services, key, tenant, rid, folder, exc)
        except Exception as exc:  # noqa: BLE001 - as NETWORK_RETRY: anything else may be transient
            if last:
                return _ended(context, services, key, tenant, rid, folder, exc)
        # NETWORK_RETRY's schedule (2 s, 4 s, 8 s, ± jitter), for this tenant alone.
        delay = NETWORK_RETRY.delay * 2**attempt * random.uniform(0.5, 1.5)
        context.log.warning(f"{key}: attempt {attempt + 1} of {attempts} failed, retrying in {delay:.1f} s")
        time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns")


def same_run_group(context: dg.AssetExecutionContext, run_id: str | None) -> bool:
    """Whether `run_id` is this run or another run of its group (the run it retries)."""
    if not run_id:
        return False
    if run_id == context.run.run_id:
        return True
    other = context.instance.get_run_by_id(run_id)
    root = context.run.root_run_id or context.run.run_id
    return other is not None and (other.root_run_id or other.run_id) == root


def _plan(
    context: dg.AssetExecutionContext,
    services: Services,
    config: MonthlyConfig,
    tenant: str,
    export_id: str,
    filters: dict[str, Any],
    rid: str,
    alone: bool,
) -> RunPlan:
    source, settings = services.source, services.settings
    catalog = settings.catalog()
    request = configured_request(catalog, config, tenant, filters, export_id)
    plan = plan_request(source, settings, catalog, request)
    if not source.requests().mark_running(rid, context.run.run_id, plan.rows_total) and (
        source.requests().is_canceled(rid)
    ):
        raise CanceledThroughApi(CANCELED_MESSAGE)
    if alone:  # lets the failure sensor abort a dead run's uploads, as count_rows does
        context.instance.add_run_tags(context.run.run_id, {tags.FOLDER: plan.location.folder})
    webhook_url, email = tenant_targets(source.conninfo, tenant, None, None)
    return RunPlan(plan, rid, webhook_url, email)


def _write(
    context: dg.AssetExecutionContext, services: Services, run_plan: RunPlan, *, abort_on_error: bool
) -> FinalizedExport:
    source, settings = services.source, services.settings
    plan, client, checkpoints = run_plan.plan, services.s3.get_client(), source.checkpoints()
    rid = run_plan.request_id or ""

    def on_progress(p: ExportProgress) -> None:
        store = source.requests()
        store.update_progress(rid, p.rows_exported, p.bytes_written)
        row = store.get(rid)
        if row is not None and row.status == "canceled":  # the batch run goes on without this one
            raise CanceledThroughApi(CANCELED_MESSAGE)

    outcome = write_export(source, settings, client, plan, on_progress, checkpoints, abort_on_error)
    if source.requests().is_canceled(rid):  # a commit point: no manifest, no _SUCCESS
        raise CanceledThroughApi(CANCELED_MESSAGE)
    return finalize_export(client, settings.bucket, plan, outcome, checkpoints)
    return finalize_export(client, settings.bucket, plan, outcome, checkpoints, signer=settings.signer())


def _ended(
    context: dg.AssetExecutionContext,
    services: Services,
    key: str,
    tenant: str,
    rid: str,
    folder: str,
    exc: BaseException,
) -> MonthOutcome:
    """A final failure of one partition: row first, then the tenant's notification, then its open
    uploads (the order of the failure sensor's record_run_failure)."""
    code = error_code(exc)
    short = tenant_message(code, exc)
    context.log.error(f"{key}: failed ({code}): {type(exc).__name__}: {exc}")
    store = services.source.requests()
    changed = store.mark_canceled(rid, short) if code == "canceled" else store.mark_failed(rid, short, code)
    row = store.get(rid)
    if changed and row is not None:
        event = CANCELED if code == "canceled" else FAILED
        notify_row(services.source, context.log, row, event, short, code)
    if folder:
        abort_uploads_logged(services.s3, services.settings, services.source, folder, context.log)
    return MonthOutcome(key, tenant, rid, folder=folder, code=code, error=f"{type(exc).__name__}: {exc}")
