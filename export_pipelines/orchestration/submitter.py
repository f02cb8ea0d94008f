"""The request submitter: a request's run is queued the moment its row is inserted.

Dagster evaluates sensors at most every 5 s (the sensor daemon's loop), so a request waited 2.5 s
on average, and up to 5 s, before `export_request_sensor` even saw it. The submitter LISTENs on
the channel the insert trigger notifies (core/storage/migrations/request_table.py's
PENDING_CHANNEL) and, on each notice and every `sweep_seconds` besides, claims pending rows with
the sensor's own rules (request_intake.claim_pending_requests) and submits their runs through the
instance's run coordinator (TenantRunCoordinator: queue, per-tenant and global caps), exactly as
the sensor's runs are. Runs carry the sensor's name and run key, so the sensor, which keeps
ticking as the fallback when no submitter runs, never starts a second run of a row the submitter
took.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from dagster import DagsterInstance, build_resources
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from export_pipelines.core.storage.migrations import migrate
from export_pipelines.core.storage.migrations.request_table import PENDING_CHANNEL
from export_pipelines.orchestration.request_intake import (
    REQUEST_SENSOR_NAME,
    ClaimedRequest,
    claim_pending_requests,
)
from export_pipelines.orchestration.resources import resources_from_settings
from export_pipelines.settings import Settings

_LOG = logging.getLogger("export_pipelines.submitter")
JOB_NAME = "tenant_export_job"
# Rows the submitter skipped (a tenant over its start rate) or missed (while it was down): looked
# for this often even when no notice comes.
DEFAULT_SWEEP_SECONDS = 5.0
SUBMIT_THREADS = 4


class RequestSubmitter:
    """Claims pending request rows and submits their runs; `serve` drives it from NOTIFY."""

    def __init__(self, instance: DagsterInstance, workspace: WorkspaceProcessContext, resources: Any) -> None:
        self.instance = instance
        self.workspace = workspace
        self.resources = resources

    def submit_pending(self) -> list[str]:
        """Claim what may start now and submit a run for each; the run ids."""
        claimed = claim_pending_requests(
            self.resources.source,
            self.resources.export_settings,
            self.resources.notifier,
            _LOG,
            pending_only=True,  # stale queued rows stay the sensor's (its run-key check)
        )
        if not claimed:
            return []
        context = self.workspace.create_request_context()
        (location_name,) = context.code_location_names
        location = context.get_code_location(location_name)
        (repository,) = location.get_repositories().values()
        remote_job = repository.get_full_job(JOB_NAME)

        def submit(request: ClaimedRequest) -> str | None:
            try:
                return self._submit(context, location, repository, remote_job, request)
            except Exception:  # noqa: BLE001 - the sensor re-requests a claimed row whose run never started
                _LOG.exception("could not submit the run of request %s", request.row.id)
                return None

        # A burst (20 tenants at once) is submitted side by side: each submission mostly waits on
        # the code server (execution plan) and PostgreSQL, 0.3-0.7 s one after another.
        with ThreadPoolExecutor(max_workers=SUBMIT_THREADS) as pool:
            return [run_id for run_id in pool.map(submit, claimed) if run_id]

    def _submit(
        self, context: Any, location: Any, repository: Any, remote_job: Any, request: ClaimedRequest
    ) -> str:
        plan = location.get_execution_plan(
            remote_job,
            request.run_config,
            step_keys_to_execute=None,
            known_state=None,
            instance=self.instance,
        )
        # As the sensor daemon creates a sensor's run (dagster/_daemon/sensor.py, _create_sensor_run).
        run_tags = {
            **(remote_job.run_tags or {}),
            **request.tags,
            SENSOR_NAME_TAG: REQUEST_SENSOR_NAME,
            RUN_KEY_TAG: request.run_key,
        }
        run = self.instance.create_run(
            job_name=remote_job.name,
            run_id=None,
            run_config=request.run_config,
            resolved_op_selection=remote_job.resolved_op_selection,
            step_keys_to_execute=None,
            status=None,
            op_selection=None,
            root_run_id=None,
            parent_run_id=None,
            tags=run_tags,
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=repository.asset_graph,
        )
        self.instance.submit_run(run.run_id, context)
        _LOG.info("request %s (tenant %s) → run %s", request.row.id, request.row.tenant_id, run.run_id)
        return run.run_id

    def serve(
        self, conninfo: str, stop: threading.Event, sweep_seconds: float = DEFAULT_SWEEP_SECONDS
    ) -> None:
        """Until `stop`: submit on every notice, and every `sweep_seconds`. A lost database
        connection is reopened (after a pause); one failed round never ends the loop."""
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {PENDING_CHANNEL}")
                    while not stop.is_set():
                        self.submit_pending()
                        # Wake on the first notice; the rest of a burst is read with it.
                        for _ in conn.notifies(timeout=sweep_seconds, stop_after=1):
                            pass
            except Exception:  # noqa: BLE001 - the database or code server is back next round
                _LOG.exception("request submitter: round failed; again in %.0f s", sweep_seconds)
                stop.wait(sweep_seconds)


@contextmanager
def request_submitter(
    settings: Settings, workspace_file: Path, code_server_log_level: str = "INFO"
) -> Iterator[RequestSubmitter]:
    """A submitter on the current Dagster instance (DAGSTER_HOME), with its own code server
    for `workspace_file` (logging at `code_server_log_level`), and the resources the definitions
    bind from settings."""
    migrate(settings.require_source_database_url())  # the notify trigger, on a database nobody migrated yet
    with (
        DagsterInstance.get() as instance,
        WorkspaceProcessContext(
            instance,
            WorkspaceFileTarget(paths=[str(workspace_file)]),
            code_server_log_level=code_server_log_level,
        ) as workspace,
        build_resources(resources_from_settings(settings)) as resources,
    ):
        yield RequestSubmitter(instance, workspace, resources)
