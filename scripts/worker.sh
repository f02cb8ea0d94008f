#!/usr/bin/env bash
# Start a Celery worker host for deploy/celery/dagster.yaml (docs/operations.md).
# Runs in the foreground (exec): run it under systemd, supervisord or a container runtime, and stop
# it with SIGTERM, which waits for the runs in progress (a warm shutdown).
#
#   scripts/worker.sh [NAME [CONCURRENCY]]     # NAME defaults to w1, CONCURRENCY to 2
#
# The host needs the project installed (`pip install -c requirements.lock ".[celery]"`, or
# scripts/setup.sh), network access to PostgreSQL, S3 and Redis, and the same environment as the
# daemon and code server: DAGSTER_HOME (holding deploy/celery/dagster.yaml as dagster.yaml),
# DAGSTER_POSTGRES_URL, DAGSTER_CELERY_BROKER_URL, DAGSTER_CELERY_BACKEND_URL, SOURCE_DATABASE_URL,
# EXPORT_BUCKET, EXPORT_PREFIX, EXPORT_IO_MANAGER=s3, the AWS_* variables and the webhook/SMTP
# settings. Each run executes in a pool child of this worker (in_process_executor), so
# CONCURRENCY is the number of runs this host takes at once.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
name="${1:-w1}"
concurrency="${2:-2}"
for var in DAGSTER_HOME DAGSTER_POSTGRES_URL DAGSTER_CELERY_BROKER_URL DAGSTER_CELERY_BACKEND_URL; do
  if [ -z "${!var:-}" ]; then
    echo "worker.sh: $var is not set (see deploy/celery/dagster.yaml)" >&2
    exit 2
  fi
done
if ! grep -q "LivenessCeleryRunLauncher" "$DAGSTER_HOME/dagster.yaml" 2>/dev/null; then
  echo "worker.sh: $DAGSTER_HOME/dagster.yaml is not deploy/celery/dagster.yaml (the Celery run launcher)" >&2
  exit 2
fi
# Compute logs go to the export bucket, next to the step outputs (deploy/celery/dagster.yaml).
export DAGSTER_COMPUTE_LOGS_PREFIX="${DAGSTER_COMPUTE_LOGS_PREFIX:-${EXPORT_PREFIX:-exports}/_dagster/compute_logs}"
# deploy/celery holds dagster_celery_config.py, the workers' Celery settings.
export PYTHONPATH="$root/deploy/celery${PYTHONPATH:+:$PYTHONPATH}"
celery="$root/.venv/bin/celery"
[ -x "$celery" ] || celery="$(command -v celery)"
# -n NAME@%h: every node needs its own name (hosts on one machine share %h), and the launcher's
# liveness check finds a run's host by it. --disable-prefetch (Redis broker): a busy host reserves
# no runs that another host could start now.
exec "$celery" -A export_pipelines.orchestration.instance.celery_app worker \
  -Q dagster -n "$name@%h" --concurrency="$concurrency" \
  --prefetch-multiplier=1 --disable-prefetch \
  --loglevel INFO
