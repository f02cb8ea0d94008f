"""Cancels asked for through the export API (`cancel_requested_at` on the row) carried out through
Dagster: a queued run is canceled in the queue, a started one is terminated by the run launcher;
once the run is canceled the row becomes `canceled`, the requester is told (`export.canceled`) and
the export's open uploads are aborted. The API itself never touches Dagster (docs/api.md)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from export_pipelines.core.delivery.notices import CANCELED
from export_pipelines.core.errors import tenant_message
from export_pipelines.core.requests.request_row import StoredRequest
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.notify_op import abort_uploads_logged, notify_row
from export_pipelines.orchestration.resources import ExportS3, ExportSettings, SourceDatabase
from export_pipelines.orchestration.sensors import latest_run
from export_pipelines.settings import Settings

NOT_STARTED = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)


def carry_out_cancels(
    instance: dg.DagsterInstance,
    source: SourceDatabase,
    s3: ExportS3 | None,
    export_settings: ExportSettings | None,
    log: Any,
) -> int:
    """One pass over the rows with a cancel request; returns how many rows became `canceled`."""
    canceled = 0
    for row in source.queue().cancel_requested():
        run = latest_run(instance, row)
        if run is not None and serves_several(run) and not run.is_finished:
            # A monthly run of several tenants: stopping it would stop the others' exports too.
            # It checks its rows' cancel asks itself, before each tenant and at each part
            # (monthly_export.py), and cancels only that tenant's export.
            continue
        if run is not None and run.status in NOT_STARTED:
            instance.report_run_canceled(run, message="canceled through the export API")
        elif run is not None and not run.is_finished:
            if run.status != dg.DagsterRunStatus.CANCELING:
                log.info(f"request {row.id}: terminating run {run.run_id}")
                instance.run_launcher.terminate(run.run_id)
            continue  # the next pass sees the run canceled
        elif run is not None and run.status != dg.DagsterRunStatus.CANCELED:
            continue  # it finished first (succeeded or failed): the other sensors record that
        if resolve_canceled(row=row, source=source, s3=s3, export_settings=export_settings, log=log):
            canceled += 1
    return canceled


def serves_several(run: dg.DagsterRun) -> bool:
    """A run of a range of monthly partitions over more than one tenant (run_coordinator.py)."""
    start, end = run.tags.get(tags.RANGE_START, ""), run.tags.get(tags.RANGE_END, "")
    return bool(start) and start.split("|", 1)[-1] != end.split("|", 1)[-1]


def resolve_canceled(
    *,
    row: StoredRequest,
    source: SourceDatabase,
    s3: ExportS3 | None,
    export_settings: ExportSettings | None,
    log: Any,
) -> bool:
    """Row first, then the notification, then the uploads (as the reaper does)."""
    if not source.requests().mark_canceled(row.id):
        return False
    notify_row(source, log, row, CANCELED, tenant_message("canceled"))
    if s3 is not None and export_settings is not None:
        abort_uploads_logged(s3, export_settings, source, row.location(export_settings.prefix).folder, log)
    return True


def build_cancel_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="export_cancel_sensor",
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Carries out cancels asked for through the export API: run canceled or terminated, "
        "row canceled, uploads aborted, requester notified.",
    )
    def export_cancel_sensor(
        context: dg.SensorEvaluationContext,
        source: SourceDatabase,
        s3: ExportS3,
        export_settings: ExportSettings,
    ) -> dg.SkipReason:
        done = carry_out_cancels(context.instance, source, s3, export_settings, context.log)
        return dg.SkipReason(f"{done} export(s) canceled")

    return export_cancel_sensor
