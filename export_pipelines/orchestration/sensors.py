# No `from __future__ import annotations` here: Dagster reads the sensors' annotations at runtime.
"""Sensors: export_requests rows → runs; tenants table → partitions; failed runs → request rows.

The request and failure sensors tick every settings.sensor_interval_seconds, so they are built by
`build_sensors(settings, monthly_job)` when the definitions are built.
"""

import time
from typing import Any

import dagster as dg

from export_pipelines.core.delivery import FAILED, deliver, webhook_payload
from export_pipelines.core.errors import ExportError
from export_pipelines.core.request_store import StoredRequest, check_request_fields
from export_pipelines.core.resume import abandon_open_uploads
from export_pipelines.core.tenants import list_tenants
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.jobs import tenant_export_job
from export_pipelines.orchestration.partitions import TENANT_PARTITIONS, TENANT_PARTITIONS_NAME
from export_pipelines.orchestration.resources import ExportS3, ExportSettings, Notifier, SourceDatabase
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines.settings import Settings


def request_run_config(row: StoredRequest) -> dict[str, Any]:
    return export_run_config(
        tenant_id=row.tenant_id,
        resource=row.resource,
        format=row.format,
        compression=row.compression or None,
        columns=row.columns or None,
        filters=row.filters or {},
        request_id=row.id,
        webhook_url=row.webhook_url,
        email=row.email,
    )


def validate_row(row: StoredRequest, settings: ExportSettings, notifier: Notifier) -> None:
    """Everything that can be checked without the database; raises with a reason a person can act on."""
    check_request_fields(
        settings.catalog(),
        notifier.allowlist(),
        tenant_id=row.tenant_id,
        resource=row.resource,
        format=row.format,
        compression=row.compression,
        columns=row.columns,
        filters=row.filters,
        webhook_url=row.webhook_url,
        email=row.email,
        export_id=row.id,
    )


def launch_pending_requests(
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
        except ExportError as exc:
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
                tags={tags.TENANT: row.tenant_id, tags.REQUEST_ID: row.id, tags.ATTEMPT: str(row.attempt)},
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
    wanted = set(list_tenants(source.conninfo, export_settings.catalog()))
    have = set(context.instance.get_dynamic_partitions(TENANT_PARTITIONS_NAME))
    missing = sorted(wanted - have)
    return dg.SensorResult(
        dynamic_partitions_requests=[TENANT_PARTITIONS.build_add_request(missing)] if missing else []
    )


def build_sensors(settings: Settings, monthly_job: dg.JobDefinition) -> list[dg.SensorDefinition]:
    interval = settings.sensor_interval_seconds

    @dg.sensor(
        name="export_request_sensor",
        job=tenant_export_job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Turns pending export_requests rows into runs (run_key = id:attempt).",
    )
    def export_request_sensor(
        context: dg.SensorEvaluationContext,
        source: SourceDatabase,
        export_settings: ExportSettings,
        notifier: Notifier,
    ) -> dg.SensorResult:
        return launch_pending_requests(context, source, export_settings, notifier)

    @dg.run_failure_sensor(
        name="export_failure_sensor",
        monitored_jobs=[tenant_export_job, monthly_job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval,
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

    return [export_request_sensor, tenant_partitions_sensor, export_failure_sensor]


def with_retry_decision(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.DagsterRun:
    """The run with Dagster's `dagster/will_retry` tag. Dagster adds the tag just after it stores
    the failure, so a sensor can see the failure first: wait briefly for the tag, then make the
    same decision Dagster makes (a final failure here would abort the upload the retry needs)."""
    if not instance.run_retries_enabled or tags.WILL_RETRY in run.tags:
        return run
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        fresh = instance.get_run_by_id(run.run_id)
        if fresh is not None and tags.WILL_RETRY in fresh.tags:
            return fresh
        time.sleep(0.2)
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

    fresh = instance.get_run_by_id(run.run_id) or run
    decided = should_retry(fresh, instance)  # also records the tag, as the daemon would
    return fresh.with_tags({**fresh.tags, tags.WILL_RETRY: str(decided).lower()})


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
    will_retry = run.tags.get(tags.WILL_RETRY) == "true"
    # The run's tags as stored now: count_rows adds the folder tag after launch.
    folder = run.tags.get(tags.FOLDER)
    if folder and not will_retry and s3 is not None and export_settings is not None:
        aborted = abandon_open_uploads(s3.get_client(), export_settings.bucket, folder, source.checkpoints())
        if aborted:
            log.info(f"aborted {aborted} open upload(s) under {folder}")
    request_id = run.tags.get(tags.REQUEST_ID)
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
        payload = webhook_payload(
            FAILED,
            export_id=row.id,
            tenant_id=row.tenant_id,
            resource=row.resource,
            rows=row.rows_exported,
            bytes_written=row.bytes_written,
            error=error,
        )
        problem = deliver(
            log,
            notifier.channels(),
            payload,
            row.webhook_url,
            row.email,
            f"Your {row.resource} export failed",
            error,
        )
        store.record_notification(request_id, problem)
