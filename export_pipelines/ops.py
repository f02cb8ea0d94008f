# No `from __future__ import annotations` here: Dagster reads these annotations at runtime.
"""The export graph's ops: each turns config into one core call and its result into metadata.

count_rows → export_files → finalize → notify. Run config is given once, to count_rows; the
later ops receive the plan as an input.
"""

from typing import Any

import dagster as dg

from export_pipelines.core.catalog import CatalogError, InvalidRequest
from export_pipelines.core.exporter import ExportOutcome, ExportPlan, ExportProgress, plan_export, run_export
from export_pipelines.core.manifest import FinalizedExport, clear_success_marker, finalize_export
from export_pipelines.core.request import build_request
from export_pipelines.resources import ExportS3, ExportSettings, SourceDatabase

# Network ops ride over transient failures; invalid input is raised with allow_retries=False.
NETWORK_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class NotifyConfig(dg.Config):
    webhook_url: str | None = None
    email: str | None = None


class ExportConfig(dg.Config):
    """What to export. Filters: date_from (inclusive), date_to (exclusive), ISO 8601; and
    catalog filter columns mapped to a value or a list of values."""

    tenant_id: str
    resource: str
    format: str = "csv"
    compression: str | None = None
    columns: list[str] | None = None
    filters: dict[str, Any] = {}
    request_id: str | None = None
    max_rows_per_file: int | None = None
    link_expiry_hours: int = 24
    notify: NotifyConfig = NotifyConfig()


def export_id_for(context: dg.OpExecutionContext, config: ExportConfig) -> str:
    """The request id, the month of a monthly partition, or the run's root run id (so a
    re-execution of the same run writes the same keys)."""
    if config.request_id:
        return config.request_id
    if context.has_partition_key:
        keys = getattr(context.partition_key, "keys_by_dimension", None)
        if keys and "month" in keys:
            return keys["month"]
    return context.run.root_run_id or context.run_id


@dg.op(retry_policy=NETWORK_RETRY, tags={"kind": "postgres"})
def count_rows(
    context: dg.OpExecutionContext,
    config: ExportConfig,
    source: SourceDatabase,
    export_settings: ExportSettings,
) -> ExportPlan:
    """Validate the request against the catalog, count its rows and fix the high-water mark."""
    try:
        catalog = export_settings.catalog()
        request = build_request(
            catalog,
            tenant_id=config.tenant_id,
            resource=config.resource,
            format=config.format,
            compression=config.compression,
            columns=config.columns,
            filters=config.filters,
            export_id=export_id_for(context, config),
            max_rows_per_file=config.max_rows_per_file,
            link_expiry_hours=config.link_expiry_hours,
        )
        plan = plan_export(source.conninfo, catalog, request, export_settings.prefix)
    except (InvalidRequest, CatalogError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    context.add_output_metadata(
        {
            "rows_total": plan.rows_total,
            "export_id": request.export_id,
            "folder": plan.location.folder,
            "high_water_mark": str(plan.high_water_mark),
        }
    )
    return plan


@dg.op(retry_policy=NETWORK_RETRY, tags={"kind": "s3"})
def export_files(
    context: dg.OpExecutionContext,
    plan: ExportPlan,
    source: SourceDatabase,
    s3: ExportS3,
    export_settings: ExportSettings,
) -> ExportOutcome:
    """Stream the rows into S3 files; progress is logged after every uploaded part."""
    client = s3.get_client()
    clear_success_marker(client, export_settings.bucket, plan.location)

    def on_progress(p: ExportProgress) -> None:
        pct = f" ({100 * p.rows_exported / p.rows_total:.1f}%)" if p.rows_total else ""
        context.log.info(
            f"progress: {p.rows_exported}/{p.rows_total} rows{pct}, {p.bytes_written} bytes, "
            f"{p.parts_uploaded} parts, {p.files_completed} files done; writing {p.file_key}"
        )

    outcome = run_export(
        plan,
        conninfo=source.conninfo,
        catalog=export_settings.catalog(),
        s3_client=client,
        bucket=export_settings.bucket,
        part_size=export_settings.part_size_mib * 1024 * 1024,
        max_parts_in_flight=export_settings.max_parts_in_flight,
        on_progress=on_progress,
    )
    context.add_output_metadata(
        {
            "rows": outcome.rows,
            "bytes": outcome.bytes,
            "files": len(outcome.files),
            "parts": sum(f.parts for f in outcome.files),
            "seconds": round(outcome.seconds, 3),
            "rows_per_second": round(outcome.rows / outcome.seconds) if outcome.seconds else 0,
        }
    )
    return outcome


@dg.op(retry_policy=NETWORK_RETRY, tags={"kind": "s3"})
def finalize(
    context: dg.OpExecutionContext,
    plan: ExportPlan,
    outcome: ExportOutcome,
    s3: ExportS3,
    export_settings: ExportSettings,
) -> FinalizedExport:
    """Write manifest.json, drop stale objects, write _SUCCESS, presign the links."""
    done = finalize_export(s3.get_client(), export_settings.bucket, plan, outcome)
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
    context.add_output_metadata(metadata)
    return done


@dg.op(tags={"kind": "notify"})
def notify(context: dg.OpExecutionContext, done: FinalizedExport) -> FinalizedExport:
    """Tell whoever asked that the export is ready."""
    context.log.info(
        f"export ready: {done.rows} rows in {len(done.files)} file(s); manifest {done.manifest_key}"
    )
    return done
