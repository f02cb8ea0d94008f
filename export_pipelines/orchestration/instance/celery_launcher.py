"""dagster-celery's run launcher, plus a check that the worker host running a run still answers.

Selected by deploy/celery/dagster.yaml (`module: export_pipelines.orchestration.instance.celery_launcher`).
The stock `CeleryRunLauncher` judges a run's health by its Celery task state in the result
backend. When only the pool child dies, the Celery master records FAILURE and that works; when
the whole worker host dies (power loss, SIGKILL of every process), nobody writes anything, the
state stays STARTED for `result_expires` (a day), and run monitoring believes the run is alive.
This subclass asks the workers which tasks they are running (`inspect active`, one broadcast per
monitoring poll) and fails a STARTED run whose host does not list it `missing_checks` polls in a
row; run retries then re-run it on another host, where the export resumes from its checkpoint.
"""

from __future__ import annotations

import time
from typing import Any

from dagster import DagsterRun, Field
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG


class LivenessCeleryRunLauncher(CeleryRunLauncher):
    def __init__(self, inspect_timeout_seconds: float = 2.0, missing_checks: int = 2, **kwargs: Any):
        self._inspect_timeout = float(inspect_timeout_seconds)
        self._missing_checks = int(missing_checks)
        self._misses: dict[str, int] = {}
        # One `inspect active` per monitoring iteration, however many runs it checks.
        self._active_cache: tuple[float, dict[str, set[str]]] = (0.0, {})
        super().__init__(**kwargs)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **super().config_type(),
            "inspect_timeout_seconds": Field(float, is_required=False, default_value=2.0),
            "missing_checks": Field(int, is_required=False, default_value=2),
        }

    def _active_by_worker(self) -> dict[str, set[str]]:
        """Task ids each answering worker node runs now (`inspect active`), cached briefly."""
        fetched_at, cached = self._active_cache
        if time.monotonic() - fetched_at < self._inspect_timeout:
            return cached
        replies = self.celery.control.inspect(timeout=self._inspect_timeout).active() or {}
        active = {node: {task["id"] for task in tasks} for node, tasks in replies.items()}
        self._active_cache = (time.monotonic(), active)
        return active

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        result = super().check_run_worker_health(run)
        if result.status != WorkerStatus.RUNNING:
            self._misses.pop(run.run_id, None)
            return result
        task_id = run.tags[DAGSTER_CELERY_TASK_ID_TAG]
        # A STARTED task's meta names the worker node and the pool child's pid.
        info = self.celery.AsyncResult(task_id).info
        node = info.get("hostname") if isinstance(info, dict) else None
        if not node:
            return result
        active = self._active_by_worker()
        if task_id in active.get(node, set()):
            self._misses.pop(run.run_id, None)
            return result
        # One missed reply can be a slow host (2 cores, a busy export): fail only after several.
        misses = self._misses[run.run_id] = self._misses.get(run.run_id, 0) + 1
        if misses < self._missing_checks:
            return result
        self._misses.pop(run.run_id, None)
        why = "does not answer" if node not in active else "answers but no longer runs the task"
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"Celery worker {node} (pid {info.get('pid')}) {why}: worker host lost.",
        )
