"""Sensors: export_requests rows → runs; tenants table → partitions; failed runs → request rows."""

import os
import time
from typing import Any

import dagster as dg

from export_pipelines.core.catalog import CatalogError, InvalidRequest
from export_pipelines.core.exporter import abandon_open_uploads
from export_pipelines.core.notify import InvalidWebhook
from export_pipelines.core.request import build_request, check_notify
from export_pipelines.core.request_store import StoredRequest, UnreadableJson
from export_pipelines.jobs import TENANT_PARTITIONS, monthly_tenant_export_job, tenant_export_job
from export_pipelines.ops import FOLDER_TAG, REQUEST_ID_TAG, deliver
from export_pipelines.resources import ExportS3, ExportSettings, Notifier, SourceDatabase

WILL_RETRY_TAG = "dagster/will_retry"
SENSOR_INTERVAL = int(os.environ.get("EXPORT_SENSOR_INTERVAL_SECONDS", "5"))
ATTEMPT_TAG = "export/attempt"


def request_run_config(row: StoredRequest) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tenant_id": row.tenant_id,
        "resource": row.resource,
        "format": row.format,
        "filters": row.filters or {},
        "request_id": row.id,
        "notify": {"webhook_url": row.webhook_url, "email": row.email},
    }
    if row.compression:
        config["compression"] = row.compression
    if row.columns:
        config["columns"] = row.columns
    return {"ops": {"count_rows": {"config": config}}}


def validate_row(row: StoredRequest, settings: ExportSettings, notifier: Notifier) -> None:
    """Everything that can be checked without the database; raises with a reason a person can act on."""
    if isinstance(row.filters, UnreadableJson):
        raise InvalidRequest("filters", f"is not JSON this service can read ({row.filters.reason})")
    build_request(
        settings.catalog(),
        tenant_id=row.tenant_id,
        resource=row.resource,
        format=row.format,
        compression=row.compression,
        columns=row.columns,
        filters=row.filters,
        export_id=row.id,
    )
    check_notify(row.webhook_url, row.email, notifier.allowlist())


@dg.sensor(
    job=tenant_export_job,
    minimum_interval_seconds=SENSOR_INTERVAL,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Turns pending export_requests rows into runs (run_key = id:attempt).",
)
def export_request_sensor(
    context: dg.SensorEvaluationContext,
    source: SourceDatabase,
    export_settings: ExportSettings,
    notifier: Notifier,
) -> dg.SensorResult:
    store = source.requests()
    runs: list[dg.RunRequest] = []
    for row in store.to_launch():
        try:
            validate_row(row, export_settings, notifier)
        except (InvalidRequest, CatalogError, InvalidWebhook) as exc:
            store.mark_invalid(row.id, row.attempt, str(exc))
            context.log.info(f"request {row.id} rejected: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - one bad row must never stop the others
            store.mark_invalid(row.id, row.attempt, f"invalid request: {type(exc).__name__}: {exc}")
            continue
        store.mark_queued(row.id, row.attempt)
        runs.append(
            dg.RunRequest(
                run_key=row.run_key,
                run_config=request_run_config(row),
                tags={"tenant": row.tenant_id, REQUEST_ID_TAG: row.id, ATTEMPT_TAG: str(row.attempt)},
            )
        )
    return dg.SensorResult(run_requests=runs)


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps the 'tenants' dynamic partitions in sync with the catalog's tenants table.",
)
def tenant_partitions_sensor(
    context: dg.SensorEvaluationContext, source: SourceDatabase, export_settings: ExportSettings
) -> dg.SensorResult:
    wanted = set(list_tenants(source, export_settings))
    have = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS.name or "tenants"))
    missing = sorted(wanted - have)
    return dg.SensorResult(
        dynamic_partitions_requests=[TENANT_PARTITIONS.build_add_request(missing)] if missing else []
    )


def list_tenants(
    source: SourceDatabase, settings: ExportSettings, enterprise_only: bool = False
) -> list[str]:
    import psycopg
    from psycopg import sql

    tenants = settings.catalog().tenants
    if tenants is None:
        return []
    query = sql.SQL("SELECT {key}::text FROM {table}").format(
        key=sql.Identifier(tenants.key), table=sql.Identifier(tenants.table.schema, tenants.table.name)
    )
    params: list[Any] = []
    if enterprise_only:
        if not tenants.enterprise_column:
            return []
        query = sql.SQL("{} WHERE {} = %s").format(query, sql.Identifier(tenants.enterprise_column))
        params.append(tenants.enterprise_value)
    with psycopg.connect(source.conninfo, autocommit=True) as conn:
        return [r[0] for r in conn.execute(sql.SQL("{} ORDER BY 1").format(query), params)]


@dg.run_failure_sensor(
    monitored_jobs=[tenant_export_job, monthly_tenant_export_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL,
    description="Marks the request row failed (or notes the error while a run retry is pending).",
)
def export_failure_sensor(
    context: dg.RunFailureSensorContext,
    source: SourceDatabase,
    notifier: Notifier,
    s3: ExportS3,
    export_settings: ExportSettings,
) -> None:
    # The steps' errors say what went wrong; the run's own message only names the steps.
    step_errors = [
        f"{e.step_key}: {e.step_failure_data.error.message.strip()}"
        for e in context.get_step_failure_events()
        if e.step_failure_data and e.step_failure_data.error
    ]
    record_run_failure(
        with_retry_decision(context.instance, context.dagster_run),
        "; ".join(step_errors) or context.failure_event.message or "run failed",
        source,
        notifier,
        context.log,
        s3,
        export_settings,
    )


def with_retry_decision(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.DagsterRun:
    """The run with Dagster's `dagster/will_retry` tag. Dagster adds the tag just after it stores
    the failure, so a sensor can see the failure first: wait briefly for the tag, then make the
    same decision Dagster makes (a final failure here would abort the upload the retry needs)."""
    if not instance.run_retries_enabled or WILL_RETRY_TAG in run.tags:
        return run
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        fresh = instance.get_run_by_id(run.run_id)
        if fresh is not None and WILL_RETRY_TAG in fresh.tags:
            return fresh
        time.sleep(0.2)
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

    fresh = instance.get_run_by_id(run.run_id) or run
    decided = should_retry(fresh, instance)  # also records the tag, as the daemon would
    return fresh.with_tags({**fresh.tags, WILL_RETRY_TAG: str(decided).lower()})


def record_run_failure(
    run: dg.DagsterRun,
    message: str,
    source: SourceDatabase,
    notifier: Notifier,
    log: Any,
    s3: ExportS3 | None = None,
    export_settings: ExportSettings | None = None,
) -> None:
    """Final failure: abort the export's open uploads and fail its request row; a failure that
    Dagster will retry only notes the error (the retry continues from the checkpoint)."""
    will_retry = run.tags.get(WILL_RETRY_TAG) == "true"
    # The run's tags as stored now: count_rows adds the folder tag after launch.
    folder = run.tags.get(FOLDER_TAG)
    if folder and not will_retry and s3 is not None and export_settings is not None:
        checkpoints = source.checkpoints()
        try:
            aborted = abandon_open_uploads(s3.get_client(), export_settings.bucket, folder, checkpoints)
        finally:
            checkpoints.close()
        if aborted:
            log.info(f"aborted {aborted} open upload(s) under {folder}")
    request_id = run.tags.get(REQUEST_ID_TAG)
    if not request_id:
        return
    store = source.requests()
    error = f"run {run.run_id} failed: {message}"
    if will_retry:
        store.note_error(request_id, error + " (retrying)")
        return
    if not store.mark_failed(request_id, error):
        return  # already failed by count_rows (invalid request) or no longer active
    row = store.get(request_id)
    if row and (row.webhook_url or row.email):
        payload = {
            "event": "export.failed",
            "export_id": row.id,
            "tenant_id": row.tenant_id,
            "resource": row.resource,
            "rows": row.rows_exported,
            "bytes": row.bytes_written,
            "files": [],
            "manifest_url": None,
            "expires_at": None,
            "error": error,
        }
        problem = deliver(
            log, notifier, payload, row.webhook_url, row.email, f"Your {row.resource} export failed", error
        )
        store.record_notification(request_id, problem)
