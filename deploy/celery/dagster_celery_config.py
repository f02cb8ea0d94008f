"""Celery settings of the worker hosts; dagster_celery.app imports this module by name
(`dagster_celery_config`) when it is on PYTHONPATH (scripts/worker.sh puts deploy/celery there).

The broker and result backend are the ones deploy/celery/dagster.yaml gives the daemon's launcher.
"""

import os

broker_url = os.environ["DAGSTER_CELERY_BROKER_URL"]
result_backend = os.environ["DAGSTER_CELERY_BACKEND_URL"]
# One run per pool slot; --disable-prefetch (scripts/worker.sh) stops a busy host from reserving
# runs another host could start now (and losing them for start_timeout_seconds if it dies).
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True
# Early ack: a task whose host dies is gone, not redelivered an hour later (Redis
# visibility_timeout) as a second worker for a run the daemon has already retried. Run
# monitoring + run retries re-run it, and the export resumes from its checkpoint.
task_acks_late = False
worker_send_task_events = False
# The warm-up in worker_process_init (celery_app.py) imports the code location: more than the
# 4 s Celery allows a starting child by default on a busy 2-core host.
worker_proc_alive_timeout = 60
# Dagster's log lines reach the worker's stdout; at INFO, not Celery's default WARNING.
worker_redirect_stdouts_level = "INFO"
# The result also names the worker node that ran it (`AsyncResult(task_id).worker`): which host
# ran which run, after the fact.
result_extended = True
# A STARTED state expires with the result: a run longer than this would read PENDING and be
# failed by run monitoring. Two days, above any export's runtime.
result_expires = 2 * 24 * 3600
