# No `from __future__ import annotations` here: Dagster reads the sensors' annotations at runtime.
"""Sensors: export_requests rows → runs; failed runs → request rows; the reaper: rows whose runs
were canceled or no longer exist → canceled / failed. (The tenants table → partitions sensor is the
monthly dumps': monthly/partitions.py.)

The request, failure and reaper sensors tick every settings.sensor_interval_seconds, so they are
built by `build_sensors(settings, export_job, monthly_job)` when the definitions are built.
"""

import logging
import time
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from export_pipelines.core.delivery.notices import CANCELED, FAILED
from export_pipelines.core.errors import error_code_of_class_names, tenant_message
from export_pipelines.core.requests.request_row import StoredRequest
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.monthly.partitions import tenant_partitions_sensor
from export_pipelines.orchestration.notify_op import abort_uploads_logged, notify_row
from export_pipelines.orchestration.op_failures import ERROR_CODE_KEY, TENANT_ERROR_KEY
from export_pipelines.orchestration.request_intake import REQUEST_SENSOR_NAME, claim_pending_requests
from export_pipelines.orchestration.resources import ExportS3, ExportSettings, Notifier, SourceDatabase
from export_pipelines.settings import Settings

# The two asset jobs, before the definitions resolve them.
ExportJob = UnresolvedAssetJobDefinition | dg.JobDefinition

_LOG = logging.getLogger(__name__)
# The reaper leaves rows alone this long after their last change: the request sensor marks a row
# queued a moment before Dagster creates its run.
REAP_AFTER_SECONDS = 30
# A final failure is the failure sensor's to record; the reaper takes over only if it has not
# after this long (a sensor that died mid-tick, a cursor that moved on).
FAILURE_GRACE_SECONDS = 300
RUN_GONE = "the export's run no longer exists"
RUN_FAILED = "the export's run failed"


def launch_pending_requests(
    context: dg.SensorEvaluationContext,
    source: SourceDatabase,
    export_settings: ExportSettings,
    notifier: Notifier,
) -> dg.SensorResult:
    """Pending rows → runs (request_intake.claim_pending_requests). With the request submitter
    running, this finds only what it has not taken yet: rows it skipped, stale queued rows."""
    claimed = claim_pending_requests(source, export_settings, notifier, context.log)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=c.run_key, run_config=c.run_config, tags=c.tags) for c in claimed]
    )


def build_sensors(
    settings: Settings, export_job: ExportJob, monthly_job: ExportJob
) -> list[dg.SensorDefinition]:
    interval = settings.sensor_interval_seconds

    @dg.sensor(
        name=REQUEST_SENSOR_NAME,
        job=export_job,
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
        monitored_jobs=[export_job, monthly_job],
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
        events = context.get_step_failure_events()
        step_errors = [  # by op name: `export_files`, not the step key `exports.export_files`
            f"{(e.step_key or '').rsplit('.', 1)[-1]}: {e.step_failure_data.error.message.strip()}"
            for e in events
            if e.step_failure_data and e.step_failure_data.error
        ]
        code, tenant_error = tenant_facing_failure(events)
        run = with_retry_decision(context.instance, context.dagster_run)
        if run.tags.get(tags.WILL_RETRY) != "true":
            # The run's tags: where the data team reads how the run ended (docs/data-team.md).
            context.instance.add_run_tags(run.run_id, outcome_tags(code, tenant_error))
        record_run_failure(
            run,
            "; ".join(step_errors) or context.failure_event.message or "run failed",
            source,
            notifier,
            context.log,
            s3,
            export_settings,
            code=code,
            tenant_error=tenant_error,
        )

    @dg.sensor(
        name="export_reaper_sensor",
        minimum_interval_seconds=max(interval, 30),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Resolves queued/running request rows whose run was canceled, failed unrecorded, "
        "or no longer exists: canceled or failed, uploads aborted, requester notified.",
    )
    def export_reaper_sensor(
        context: dg.SensorEvaluationContext,
        source: SourceDatabase,
        notifier: Notifier,
        s3: ExportS3,
        export_settings: ExportSettings,
    ) -> dg.SkipReason:
        resolved = reap_unfinished_requests(
            context.instance, source, notifier, context.log, s3, export_settings
        )
        return dg.SkipReason(f"resolved {resolved} request(s)" if resolved else "nothing to resolve")

    return [export_request_sensor, tenant_partitions_sensor, export_failure_sensor, export_reaper_sensor]


def tenant_facing_failure(events: list[Any]) -> tuple[str, str]:
    """(error_code, short message) of a failed run, from its step failures: the metadata the ops
    put on their final dg.Failure, else the error's class names (core.errors maps both)."""
    for e in events:
        data = e.step_failure_data
        user = data.user_failure_data if data else None
        metadata = user.metadata if user else {}
        if ERROR_CODE_KEY in metadata:
            code = str(metadata[ERROR_CODE_KEY].value)
            message = metadata.get(TENANT_ERROR_KEY)
            return code, str(message.value) if message is not None else tenant_message(code)
    for e in events:
        error = e.step_failure_data.error if e.step_failure_data else None
        names = []
        while error is not None and len(names) < 20:
            names.append(error.cls_name or "")
            error = error.cause or error.context
        code = error_code_of_class_names(names)
        if code != "internal":
            return code, tenant_message(code)
    return "internal", tenant_message("internal")


def outcome_tags(code: str, tenant_error: str) -> dict[str, str]:
    """How a failed run ended, beside run_page.result_tags of a successful one."""
    if code == "canceled":
        return {tags.OUTCOME: "canceled"}
    return {tags.OUTCOME: f"failed ({code})", tags.ERROR: tenant_error}


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
    *,
    code: str = "internal",
    tenant_error: str | None = None,
) -> None:
    """Final failure: fail the request row and notify FIRST, then abort the export's open uploads
    (an abort that raises, S3 down or a wrong key, is logged: the row is already failed). A
    failure that Dagster will retry only notes the error (the retry continues from the checkpoint).

    `message` (the steps' errors) goes to the log; the row and the notification get `code` and the
    short `tenant_error` only."""
    log = log or _LOG
    will_retry = run.tags.get(tags.WILL_RETRY) == "true"
    short = tenant_error or tenant_message(code)
    log.info(f"run {run.run_id} failed ({code}): {message}")
    store = source.requests()
    row = own_row(store, run)
    if row is not None:
        if will_retry:
            store.note_error(row.id, short + " (retrying)", code)
            return
        if code == "canceled":  # terminated on request (the API's cancel): not a failure
            if store.mark_canceled(row.id, short):
                notify_row(source, log, row, CANCELED, short, code)
        elif store.mark_failed(row.id, short, code):
            notify_row(source, log, row, FAILED, short, code)
    if will_retry or s3 is None or export_settings is None:
        return
    # The folder from (prefix, tenant, resource, export id), never from a row's column; a run
    # without a row (monthly) has the folder count_rows derived the same way in its tag.
    folder = row.location(export_settings.prefix).folder if row is not None else run.tags.get(tags.FOLDER)
    if folder:
        abort_uploads_logged(s3, export_settings, source, folder, log)


def own_row(store: RequestStore, run: dg.DagsterRun) -> StoredRequest | None:
    """The request row a run serves: named by its request tag, of the run's tenant."""
    request_id = run.tags.get(tags.REQUEST_ID)
    row = store.get(request_id) if request_id else None
    if row is None or row.tenant_id != run.tags.get(tags.TENANT, row.tenant_id):
        return None
    return row


def latest_run(instance: dg.DagsterInstance, row: StoredRequest) -> dg.DagsterRun | None:
    """The newest run serving this attempt of the row (a Dagster retry copies the tags)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={tags.REQUEST_ID: row.id, tags.ATTEMPT: str(row.attempt)}), limit=1
    )
    if runs:
        return runs[0]
    return instance.get_run_by_id(row.run_id) if row.run_id else None


def reap_unfinished_requests(
    instance: dg.DagsterInstance,
    source: SourceDatabase,
    notifier: Notifier,
    log: Any,
    s3: ExportS3 | None = None,
    export_settings: ExportSettings | None = None,
    *,
    older_than_seconds: int = REAP_AFTER_SECONDS,
    failure_grace_seconds: int = FAILURE_GRACE_SECONDS,
) -> int:
    """Queued and running rows whose run was canceled → canceled; whose run failed and nobody
    recorded it (after a grace period) → failed; running rows whose run no longer exists →
    failed. Each: row first, then notification, then uploads aborted. A queued row without a run
    is left to the request sensor, which re-requests it. Returns how many rows were resolved."""
    store = source.requests()
    resolved = 0
    now = time.time()
    for row in source.queue().unfinished(older_than_seconds=older_than_seconds):
        run = latest_run(instance, row)
        if run is None:
            if row.status != "running":
                continue
            changed, event, error = store.mark_failed(row.id, RUN_GONE, "internal"), FAILED, RUN_GONE
            code = "internal"
        elif run.status == dg.DagsterRunStatus.CANCELED:
            changed, event, error = store.mark_canceled(row.id), CANCELED, tenant_message("canceled")
            code = "canceled"
            if run.tags.get(tags.OUTCOME) != "canceled":  # stopped before any step could say so
                instance.add_run_tags(run.run_id, outcome_tags("canceled", error))
        elif (
            run.status == dg.DagsterRunStatus.FAILURE
            and run.tags.get(tags.WILL_RETRY) != "true"
            and now - row_age_reference(row) > failure_grace_seconds
        ):
            changed, event, error = store.mark_failed(row.id, RUN_FAILED, "internal"), FAILED, RUN_FAILED
            code = "internal"
        else:
            continue
        if not changed:
            continue
        resolved += 1
        log.info(f"request {row.id}: {error} (run {run.run_id if run else 'gone'})")
        notify_row(source, log, row, event, error, code)
        if s3 is not None and export_settings is not None:
            abort_uploads_logged(
                s3, export_settings, source, row.location(export_settings.prefix).folder, log
            )
    return resolved


def row_age_reference(row: StoredRequest) -> float:
    moment = row.started_at or row.queued_at or row.created_at
    return moment.timestamp()
