# No `from __future__ import annotations` here: Dagster reads these annotations at runtime.
"""The export graph's ops: each turns config into one core call and its result into metadata.

count_rows → export_files → finalize → notify. Run config is given once, to count_rows; the
later ops receive the plan as an input. When the run serves a row of export_requests, each op
also moves that row along (running, progress, succeeded); failures are recorded by
`export_failure_sensor`, which knows whether the run will be retried.

A feed delivery's window and record are feed_steps.py's, an export into a tenant's destination
destination_steps.py's, how an op fails op_failures.py's.
"""

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import dagster as dg

from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.destination_export import delivered
from export_pipelines.core.engine.exporter import PROGRESS_EVERY_SECONDS, run_export
from export_pipelines.core.engine.janitor import run_janitor
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import ExportPlan, plan_export
from export_pipelines.core.engine.resume import abandon_open_uploads
from export_pipelines.core.errors import (
    DestinationNotFound,
    ExportCanceled,
    ExportError,
    InvalidRequest,
    S3ConfigurationError,
    TransientError,
    error_code,
    tenant_message,
)
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.core.requests.refusals import PDF_ROWS
from export_pipelines.core.requests.request import ExportRequest, build_request, check_notify
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.requests.tenant_settings import targets as tenant_targets
from export_pipelines.core.requests.tenants import require_tenant
from export_pipelines.core.results import ExportOutcome, ExportProgress, FinalizedExport
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.destination_steps import export_into_destination, find_destination
from export_pipelines.orchestration.exports_asset import refuse_unselected_resource
from export_pipelines.orchestration.feed_steps import feed_window, record_feed_delivery
from export_pipelines.orchestration.op_failures import (
    NETWORK_RETRY,
    canceled_failure,
    explained_on_last_attempt,
    failure,
    is_last_attempt,
)
from export_pipelines.orchestration.resources import ExportS3, ExportSettings, SourceDatabase
from export_pipelines.orchestration.run_page import progress_line, readable_summary

# States of a request row a run may take on: waiting for it, its own (retry), or failed before
# (a re-execution). Never one that finished well (succeeded, expired) or was canceled.
LAUNCHABLE = ("pending", "queued", "running", "failed")
# An export id shaped like a month (YYYY-MM, optionally more after it) is a monthly dump's folder.
MONTH_SHAPED = re.compile(r"\d{4}-\d{2}(?:\b.*)?", re.DOTALL)


def stop_if_canceled(source: SourceDatabase, request_id: str | None) -> None:
    """A commit point's check: a canceled request is never produced."""
    if request_id and source.requests().is_canceled(request_id):
        raise canceled_failure(request_id)


class NotifyConfig(dg.Config):
    webhook_url: str | None = None
    email: str | None = None


class ExportConfig(dg.Config):
    """What to export. Filters: date_from (inclusive), date_to (exclusive), ISO 8601; and
    catalog filter columns mapped to a value or a list of values."""

    tenant_id: str
    resource: str
    # csv | csv_excel (the CSV excel profile) | jsonl | json | parquet | xlsx; see docs/formats.md.
    format: str = "csv"
    # Per format (default first): csv, jsonl, json: gzip | zstd | none; csv_excel: none | gzip | zstd;
    # parquet: zstd | snappy | none; xlsx: none.
    compression: str | None = None
    columns: list[str] | None = None
    # Values may be null ({"date_from": null} means no lower bound): with plain Any, Dagster
    # crashes on a null map value ("Null map member not caught") before the run even starts.
    filters: dict[str, Any | None] = {}
    request_id: str | None = None
    max_rows_per_file: int | None = None
    link_expiry_hours: int = 24
    notify: NotifyConfig = NotifyConfig()
    # A destination of the tenant (its own bucket or SFTP server); None: our bucket and links.
    destination_id: str | None = None


@dataclass(frozen=True)
class RunPlan:
    """The core plan plus who to tell when it is done."""

    plan: ExportPlan
    request_id: str | None
    webhook_url: str | None
    email: str | None
    destination_id: str | None = None  # the id only; credentials are read where they are used


def configured_request(
    catalog: Catalog, config: Any, tenant_id: str, filters: dict[str, Any], export_id: str
) -> ExportRequest:
    """The validated request of one export: `config` is an ExportConfig or a MonthlyConfig (the
    same export fields); tenant, filters and export id come from the caller (run config, partition)."""
    return build_request(
        catalog,
        tenant_id=tenant_id,
        resource=config.resource,
        format=config.format,
        compression=config.compression,
        columns=config.columns,
        filters=filters,
        export_id=export_id,
        max_rows_per_file=config.max_rows_per_file,
        link_expiry_hours=config.link_expiry_hours,
    )


def plan_request(
    source: SourceDatabase,
    export_settings: ExportSettings,
    catalog: Catalog,
    request: ExportRequest,
    prefix: str | None = None,
) -> ExportPlan:
    """Check the tenant exists, count the rows and fix the cut (or take an earlier attempt's).
    `prefix`: a destination's (its folders are laid out as ours, below its own prefix)."""
    require_tenant(source.conninfo, catalog, request.tenant_id)
    return plan_export(
        source.conninfo,
        catalog,
        request,
        export_settings.prefix if prefix is None else prefix,
        source.checkpoints(),
        statement_timeout_seconds=export_settings.statement_timeout_seconds,
        pdf_max_rows=export_settings.pdf_max_rows,
    )


def write_export(
    source: SourceDatabase,
    export_settings: ExportSettings,
    client: Any,
    plan: ExportPlan,
    on_progress: Callable[[ExportProgress], None],
    checkpoints: CheckpointStore,
    abort_on_error: bool,
) -> ExportOutcome:
    """Stream a planned export's files to S3 with the deployment's settings (part size, parts in
    flight, statement timeout), after removing a `_SUCCESS` an earlier attempt may have left."""
    clear_success_marker(client, export_settings.bucket, plan.location)
    return run_export(
        plan,
        conninfo=source.conninfo,
        catalog=export_settings.catalog(),
        s3_client=client,
        bucket=export_settings.bucket,
        part_size=export_settings.part_size_mib * 1024 * 1024,
        max_parts_in_flight=export_settings.max_parts_in_flight,
        on_progress=on_progress,
        checkpoints=checkpoints,
        abort_on_error=abort_on_error,
        statement_timeout_seconds=export_settings.statement_timeout_seconds,
        # Progress by rows too: a typical export is one 8 MiB part (run page, API, /exports page).
        rows_progress_seconds=PROGRESS_EVERY_SECONDS,
    )


@dg.op(retry_policy=NETWORK_RETRY, tags={"kind": "postgres"})
def count_rows(
    context: dg.OpExecutionContext,
    config: ExportConfig,
    source: SourceDatabase,
    export_settings: ExportSettings,
) -> RunPlan:
    """Validate the request against the catalog, count its rows and fix the high-water mark."""
    refuse_unselected_resource(context, export_settings.catalog(), config.resource)
    tenant_id, filters = config.tenant_id, dict(config.filters)
    export_id = config.request_id or context.run.root_run_id or context.run_id
    # (Monthly partitions run monthly_export.py's export_month, not this graph.)
    request_id = config.request_id
    window = None
    if request_id:
        request_id = own_request_row(context, source.requests(), request_id, tenant_id, config.resource)
        if request_id:
            window = feed_window(source, request_id)
    try:
        check_notify(config.notify.webhook_url, config.notify.email)
        catalog = export_settings.catalog()
        request = configured_request(catalog, config, tenant_id, filters, export_id)
        if window is not None:
            request = replace(request, feed=window)
        prefix, destination_id = None, None
        if config.destination_id:
            found = find_destination(source, config.destination_id, tenant_id)
            if found is None:
                raise DestinationNotFound(
                    f"destination_id: {config.destination_id} does not exist (deleted?)", "destination_id"
                )
            if found.kind != "link":  # a `link` destination is our bucket: the export as without one
                prefix, destination_id = found.prefix, found.id
        with explained_on_last_attempt(context):
            plan = plan_request(source, export_settings, catalog, request, prefix)
    except TransientError:
        raise  # NETWORK_RETRY tries again
    except ExportError as exc:  # the request or the deployment is wrong: no attempt can succeed
        if over_pdf_cap(exc, config.format):
            source.requests().count_refusal(PDF_ROWS)
        if request_id:
            code = error_code(exc)
            source.requests().mark_failed(request_id, tenant_message(code, exc), code)
        raise failure(exc, str(exc)) from exc
    # The row becomes running only if it was not canceled meanwhile (the store's guard).
    if request_id and not source.requests().mark_running(request_id, context.run_id, plan.rows_total):
        stop_if_canceled(source, request_id)
    # The export id too: a run executed in-process (the demo without a daemon) never passed the
    # run coordinator, which tags queued runs before they start.
    context.instance.add_run_tags(
        context.run_id, {tags.FOLDER: plan.location.folder, tags.EXPORT_ID: request.export_id}
    )
    feed = plan.request.feed
    if feed is not None:
        context.instance.add_run_tags(
            context.run_id,
            {
                tags.FEED_ID: feed.feed_id,
                tags.FEED_SEQUENCE: str(feed.sequence),
                tags.FEED_MODE: feed.mode,
                tags.FEED_PREVIOUS_SNAPSHOT: feed.previous_snapshot or "",
            },
        )
        context.log.info(
            f"feed {feed.feed_id} delivery {feed.sequence}: {feed.mode}"
            + (f" since snapshot {feed.previous_snapshot}" if feed.previous_snapshot else f" ({feed.reason})")
        )
    if plan.resumed:
        context.log.info(f"resuming export {plan.location.folder}: reusing the cut of an earlier attempt")
    context.add_output_metadata(
        {
            "rows_total": plan.rows_total,
            "export_id": request.export_id,
            "folder": plan.location.folder,
            "high_water_mark": str(plan.high_water_mark),
            "resumed": plan.resumed,
        }
    )
    webhook_url, email = tenant_targets(
        source.conninfo, tenant_id, config.notify.webhook_url, config.notify.email
    )
    return RunPlan(plan, request_id, webhook_url, email, destination_id)


def over_pdf_cap(exc: ExportError, format: str) -> bool:
    """A pdf request refused for its row count: for a known format ("pdf"), the format is refused
    only by the row cap of planning."""
    return format == "pdf" and isinstance(exc, InvalidRequest) and exc.field == "format"


def own_request_row(
    context: dg.OpExecutionContext, store: RequestStore, request_id: str, tenant_id: str, resource: str
) -> str | None:
    """The run config's request_id, if the run may move that row along: it must name a row of this
    run's tenant and resource, in a state a run may take on. A request_id naming no row is an
    ad-hoc export id (nothing to update); one naming another tenant's or resource's row, or a
    finished row, fails the run without touching the row."""
    if MONTH_SHAPED.fullmatch(request_id):
        # A month is the export id of the monthly dump's folder (…/tenant=t/resource/YYYY-MM/):
        # an ad-hoc run under it would replace the tenant's monthly files.
        exc = InvalidRequest(
            "request_id",
            f"{request_id!r} is the export id of a monthly dump (YYYY-MM), which only the monthly "
            "job writes; re-run that month with `export-pipelines backfill --month "
            f"{request_id[:7]}`, or leave request_id empty for an ad-hoc export",
        )
        raise failure(exc, str(exc))
    row = store.get(request_id)
    if row is None:
        return None
    if row.status == "canceled" and row.tenant_id == tenant_id and row.resource == resource:
        raise canceled_failure(request_id)  # canceled before this run (or its retry) started
    if row.origin == "monthly":
        month = row.folder_export_id
        exc = InvalidRequest(
            "request_id",
            f"names the monthly dump of tenant {row.tenant_id} ({month}), which only the monthly job "
            f"writes; re-run it with `export-pipelines backfill --month {month[:7]}`",
        )
        raise failure(exc, str(exc))
    if row.tenant_id != tenant_id or row.resource != resource or row.status not in LAUNCHABLE:
        context.log.error(
            f"request_id {request_id} names a {row.status} request of another tenant or resource "
            f"(or one no run may take on); its row is left alone"
        )
        exc = InvalidRequest(
            "request_id",
            "must name a pending, queued, running or failed request of this run's tenant and resource",
        )
        raise failure(exc, str(exc)) from None
    return request_id


@dg.op(retry_policy=NETWORK_RETRY, tags={"kind": "s3"})
def export_files(
    context: dg.OpExecutionContext,
    run_plan: RunPlan,
    source: SourceDatabase,
    s3: ExportS3,
    export_settings: ExportSettings,
) -> ExportOutcome:
    """Stream the rows into S3 files; progress is logged (and put on the request row) per part."""
    plan = run_plan.plan
    client = s3.get_client()
    checkpoints = source.checkpoints()

    started = time.monotonic()

    def on_progress(p: ExportProgress) -> None:
        context.log.info(progress_line(p, time.monotonic() - started))
        rid = run_plan.request_id
        store = source.requests()
        # A canceled row takes no progress: stop at this part rather than at the next op.
        if (
            rid
            and not store.update_progress(rid, p.rows_exported, p.bytes_written)
            and store.is_canceled(rid)
        ):
            raise ExportCanceled(f"request {rid} was canceled")

    if run_plan.destination_id:
        outcome = export_into_destination(context, run_plan, source, export_settings, on_progress)
        context.add_output_metadata(
            {"rows": outcome.rows, "bytes": outcome.bytes, "files": len(outcome.files)}
        )
        return outcome
    try:
        # The last attempt aborts its upload on error; earlier ones leave it for the retry to continue.
        with explained_on_last_attempt(context):
            outcome = write_export(
                source, export_settings, client, plan, on_progress, checkpoints, is_last_attempt(context)
            )
    except S3ConfigurationError as exc:
        # Wrong bucket or credentials: retrying cannot help, say so at once.
        with contextlib.suppress(Exception):  # e.g. there is no bucket to clean up in
            abandon_open_uploads(client, export_settings.bucket, plan.location.folder, checkpoints)
        raise failure(exc, str(exc)) from exc
    context.add_output_metadata(
        {
            "rows": outcome.rows,
            "bytes": outcome.bytes,
            "files": len(outcome.files),
            "parts": sum(f.parts for f in outcome.files),
            "seconds": round(outcome.seconds, 3),
            "rows_per_second": round(outcome.rows / outcome.seconds) if outcome.seconds else 0,
            **readable_summary(outcome.rows, outcome.bytes, outcome.seconds),
        }
    )
    return outcome


@dg.op(retry_policy=NETWORK_RETRY, tags={"kind": "s3"})
def finalize(
    context: dg.OpExecutionContext,
    run_plan: RunPlan,
    outcome: ExportOutcome,
    source: SourceDatabase,
    s3: ExportS3,
    export_settings: ExportSettings,
) -> FinalizedExport:
    """Write manifest.json, drop stale objects, write _SUCCESS, presign the links."""
    # A commit point: a canceled request gets no manifest and no _SUCCESS (the cancel sensor
    # deletes whatever the run wrote once it has finished).
    stop_if_canceled(source, run_plan.request_id)
    if run_plan.destination_id:  # export_files delivered everything, manifest and _SUCCESS included
        found = find_destination(source, run_plan.destination_id, run_plan.plan.request.tenant_id)
        if found is None:
            exc = DestinationNotFound(
                f"destination_id: {run_plan.destination_id} was deleted during the export"
            )
            raise failure(exc, str(exc))
        done = delivered(found, run_plan.plan, outcome)
        if run_plan.plan.request.feed is not None:  # what the feed's next delivery starts from
            record_feed_delivery(context, run_plan, outcome, done, source)
        return done
    with explained_on_last_attempt(context):
        done = finalize_export(
            s3.get_client(),
            export_settings.bucket,
            run_plan.plan,
            outcome,
            source.checkpoints(),
            signer=export_settings.signer(),
        )
    if run_plan.plan.request.feed is not None:
        record_feed_delivery(context, run_plan, outcome, done, source)
    metadata: dict[str, Any] = {
        "rows": done.rows,
        "bytes": done.bytes,
        "files": len(done.files),
        "seconds": round(outcome.seconds, 3),
        "rows_per_second": round(outcome.rows / outcome.seconds) if outcome.seconds else 0,
        "manifest_key": done.manifest_key,
        "manifest_url": dg.MetadataValue.url(done.manifest_url),
        "expires_at": done.expires_at.isoformat(),
    }
    for number, link in enumerate(done.files, start=1):
        metadata[f"file_{number:05d}_url"] = dg.MetadataValue.url(link.url)
    metadata.update(readable_summary(done.rows, done.bytes, outcome.seconds))
    context.add_output_metadata(metadata)
    return done


@dg.op(tags={"kind": "s3"})
def clean_up_exports(
    context: dg.OpExecutionContext, source: SourceDatabase, s3: ExportS3, export_settings: ExportSettings
) -> None:
    """Expire exports past their link expiry (delete their files), abort abandoned uploads, forget
    checkpoints of exports abandoned for a week, delete step outputs and compute logs a week old."""
    report = run_janitor(
        source.requests(),
        s3.get_client(),
        export_settings.bucket,
        export_settings.prefix,
        export_settings.abort_uploads_after(),
        source.checkpoints(),
    )
    context.add_output_metadata(
        {
            "expired_requests": report.expired_requests,
            "deleted_objects": report.deleted_objects,
            "aborted_uploads": report.aborted_uploads,
            "pruned_checkpoints": report.pruned_checkpoints,
            "deleted_run_objects": report.deleted_run_objects,
        }
    )
