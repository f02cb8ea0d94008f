"""The Celery app worker hosts run (`celery -A export_pipelines.orchestration.instance.celery_app worker`,
see scripts/worker.sh): dagster-celery's app and tasks, plus a warm-up in each pool child.

Each run executes inside a pool child (in_process_executor), which imports Dagster and the code
location on its first run: 2.6-4.1 s measured. Doing that when the child starts, before it takes a
task, brought a fresh child's first run to 1.1-1.2 s. (Importing the code location in the master
before the fork did not help.) The app's settings come from the `dagster_celery_config` module
(deploy/celery/dagster_celery_config.py on PYTHONPATH), which dagster_celery.app loads.
"""

from __future__ import annotations

import time
from typing import Any

from celery.signals import worker_process_init
from dagster_celery.app import app, execute_job, execute_plan, resume_job

__all__ = ["app", "execute_job", "execute_plan", "resume_job"]


@worker_process_init.connect
def _warm_up(**_kwargs: Any) -> None:
    started = time.monotonic()
    import dagster._cli.api  # noqa: F401 - the run command body the task calls
    from dagster import DagsterInstance
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.execution.api import execute_run_iterator  # noqa: F401

    # The instance (dagster.yaml, PostgreSQL storage) and the code location the run's code
    # pointer names (workspace.yaml: module export_pipelines.definitions, attribute defs).
    with DagsterInstance.get() as instance:
        instance.get_run_records(limit=1)
    repo = ReconstructableRepository.for_module("export_pipelines.definitions", "defs", None)
    repo.get_definition().get_job("tenant_export_job")
    print(f"export_pipelines: pool child warm-up {time.monotonic() - started:.2f}s", flush=True)
