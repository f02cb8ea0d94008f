"""A real `dagster-daemon` (sensors, run queue, run monitoring, run retries) for end-to-end tests,
with its own instance database in PostgreSQL and the project's dagster.yaml."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from export_pipelines_tests.support.services import WEBHOOK_SECRET, with_db

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed"}


@contextlib.contextmanager
def running_daemon(
    stack_env: dict[str, str],
    source_url: str,
    bucket: str,
    home: Path,
    dagster_db: str,
    dagster_yaml: Path = ROOT / "dagster.yaml",
    **extra_env: str,
) -> Iterator[dict[str, str]]:
    """Start the daemon on a fresh instance database; yield the environment its runs see.
    `dagster_yaml`: the instance config (deploy/celery/dagster.yaml for the Celery launcher)."""
    admin = with_db(stack_env["SOURCE_DATABASE_URL"], "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dagster_db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dagster_db}"')
    (home / "dagster.yaml").write_text(dagster_yaml.read_text())
    env = {
        **os.environ,
        **stack_env,
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": with_db(stack_env["SOURCE_DATABASE_URL"], dagster_db),
        "SOURCE_DATABASE_URL": source_url,
        "EXPORT_BUCKET": bucket,
        "EXPORT_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}",
        "EXPORT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "EXPORT_SENSOR_INTERVAL_SECONDS": "2",
        **extra_env,
    }
    log = open(home / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so teardown also stops the run workers it launched
    )
    try:
        _wait_for_queue_heartbeat(env["DAGSTER_POSTGRES_URL"], proc, home / "daemon.log")
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _wait_for_queue_heartbeat(dagster_url: str, proc: subprocess.Popen, log: Path) -> None:
    """Until the daemon serves the run queue. Before its first heartbeat, `export-pipelines demo`
    takes the daemon as stopped and runs in-process, past the queue the tests are about."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dagster-daemon exited: {log.read_text()[-3000:]}"
        with contextlib.suppress(psycopg.errors.UndefinedTable), psycopg.connect(dagster_url) as conn:
            beat = conn.execute(
                "SELECT 1 FROM daemon_heartbeats WHERE daemon_type = 'QUEUED_RUN_COORDINATOR'"
            ).fetchone()
            if beat:
                return
        time.sleep(0.5)
    raise AssertionError(f"dagster-daemon sent no run-queue heartbeat in 180 s: {log.read_text()[-3000:]}")


def wait_for(store, request_id: str, timeout: float = 180) -> tuple[object, float]:
    """The request row once it is succeeded or failed, and how long that took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        row = store.get(request_id)
        if row.status in TERMINAL:
            return row, time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"request {request_id} still {store.get(request_id).status} after {timeout}s")
