"""A canceled export's run stopped and its folder emptied. The cancel itself (the API's
`POST /v1/exports/{id}/cancel`, `export-pipelines cancel`) commits `canceled` on the row at once
(core/requests/request_store.py) and records its notifications; nothing here touches the row's status
or tells anyone. For each canceled row flagged `cancel_cleanup_pending` this sensor:

- stops every unfinished run serving the row's attempt, first tagging it `dagster/max_retries=0` so
  that Dagster's run retries never restart it (a run terminated while starting is failed "from
  outside the execution context", which run retries would otherwise re-run): a queued run is
  canceled in the queue, a started one terminated through the instance's run launcher (the process
  launcher, or the Celery launcher's revoke);
- once every such run has finished (and a few seconds passed, for a worker's last write), deletes
  the export's folder in S3 and aborts its open multipart uploads, then clears the flag.

A run that was not stopped in time commits nothing either: count_rows, finalize and notify check the
row before they commit (ops.py, notify_op.py). The API itself never touches Dagster (docs/api.md)."""

from __future__ import annotations

import time
from typing import Any

import dagster as dg

from export_pipelines.core.requests.request_row import StoredRequest
from export_pipelines.core.storage.s3 import delete_prefix
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.notify_op import abort_uploads_logged
from export_pipelines.orchestration.resources import ExportS3, ExportSettings, SourceDatabase
from export_pipelines.settings import Settings

NOT_STARTED = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)
# After the last run finished, wait this long before the folder is emptied for the last time: a run
# worker that was failed from outside may still be finishing a write.
SETTLE_SECONDS = 5.0


def carry_out_cancels(
    instance: dg.DagsterInstance,
    source: SourceDatabase,
    s3: ExportS3 | None,
    export_settings: ExportSettings | None,
    log: Any,
) -> int:
    """One pass over the canceled rows still to clean up; returns how many were finished."""
    finished = 0
    store = source.requests()
    for row in store.cancel_cleanups():
        runs = runs_of(instance, row)
        running = [r for r in runs if not r.is_finished]
        if any(serves_several(r) for r in running):
            # A monthly run of several tenants: stopping it would stop the others' exports too. It
            # checks its rows before each tenant and at each part (monthly_export.py) and drops
            # this tenant's export; the folder is emptied once the batch run has finished.
            continue
        for run in running:
            stop_run(instance, run, log, row.id)
        if running or not settled(instance, runs):
            if s3 is not None and export_settings is not None and not running:
                clean_folder(row, source, s3, export_settings, log)
            continue  # the next pass sees the runs finished
        if s3 is not None and export_settings is not None:
            clean_folder(row, source, s3, export_settings, log)
        if store.cleanup_done(row.id):
            finished += 1
    return finished


def runs_of(instance: dg.DagsterInstance, row: StoredRequest) -> list[dg.DagsterRun]:
    """Every run serving this attempt of the row: the sensor's or submitter's run, its retries
    (they copy the tags), a re-execution."""
    runs = list(
        instance.get_runs(
            filters=dg.RunsFilter(tags={tags.REQUEST_ID: row.id, tags.ATTEMPT: str(row.attempt)})
        )
    )
    if row.run_id and all(r.run_id != row.run_id for r in runs):
        own = instance.get_run_by_id(row.run_id)
        if own is not None:
            runs.append(own)
    return runs


def stop_run(instance: dg.DagsterInstance, run: dg.DagsterRun, log: Any, request_id: str) -> None:
    """Stop a canceled export's run so that nothing restarts it."""
    if run.tags.get(tags.MAX_RETRIES) != "0":
        instance.add_run_tags(run.run_id, {tags.MAX_RETRIES: "0"})
    if run.status in NOT_STARTED:
        log.info(f"request {request_id}: canceling queued run {run.run_id}")
        instance.report_run_canceled(run, message="canceled through the export API")
    elif run.status != dg.DagsterRunStatus.CANCELING:
        log.info(f"request {request_id}: terminating run {run.run_id}")
        instance.run_launcher.terminate(run.run_id)


def settled(instance: dg.DagsterInstance, runs: list[dg.DagsterRun]) -> bool:
    """Every run finished at least SETTLE_SECONDS ago."""
    now = time.time()
    for run in runs:
        record = instance.get_run_record_by_id(run.run_id)
        ended = record.end_time if record is not None else None
        if ended is None:
            ended = record.update_timestamp.timestamp() if record is not None else 0.0
        if now - ended < SETTLE_SECONDS:
            return False
    return True


def clean_folder(
    row: StoredRequest, source: SourceDatabase, s3: ExportS3, export_settings: ExportSettings, log: Any
) -> None:
    """Delete everything under the export's folder and abort its open uploads. The folder from
    (prefix, tenant, resource, export id), never from a column of the row."""
    folder = row.location(export_settings.prefix).folder
    abort_uploads_logged(s3, export_settings, source, folder, log)
    try:
        deleted = delete_prefix(s3.get_client(), export_settings.bucket, folder)
    except Exception as exc:  # noqa: BLE001 - S3 down: the next pass tries again
        log.warning(f"could not empty {folder}: {type(exc).__name__}: {exc}")
        return
    if deleted:
        log.info(f"request {row.id}: deleted {deleted} object(s) under {folder}")


def serves_several(run: dg.DagsterRun) -> bool:
    """A run of a range of monthly partitions over more than one tenant (run_coordinator.py)."""
    start, end = run.tags.get(tags.RANGE_START, ""), run.tags.get(tags.RANGE_END, "")
    return bool(start) and start.split("|", 1)[-1] != end.split("|", 1)[-1]


def build_cancel_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="export_cancel_sensor",
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Canceled exports: their runs stopped (never retried), their folders emptied "
        "and open uploads aborted.",
    )
    def export_cancel_sensor(
        context: dg.SensorEvaluationContext,
        source: SourceDatabase,
        s3: ExportS3,
        export_settings: ExportSettings,
    ) -> dg.SkipReason:
        done = carry_out_cancels(context.instance, source, s3, export_settings, context.log)
        return dg.SkipReason(f"{done} canceled export(s) cleaned up")

    return export_cancel_sensor
