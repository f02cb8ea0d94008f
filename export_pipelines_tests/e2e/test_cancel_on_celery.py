"""A canceled export is never produced on the Celery launcher either (deploy/celery/dagster.yaml: the
liveness Celery launcher, a Redis broker from scripts/broker.sh, a worker from scripts/worker.sh),
with the real daemon, request submitter and API server: a started run is terminated through the
launcher (the task revoked), tagged so that run retries never restart it, and its folder emptied.
The same checks as the default launcher's (api/test_cancel_through_dagster.py): status history, runs
per request, S3 objects and open uploads."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest

from export_pipelines_tests.support.api_helpers import free_port
from export_pipelines_tests.support.cancel_moments import (
    Stack,
    cancel_stack,
    never_produced_check,
    of_tenant,
    request_row,
    run_status,
    runs_of,
    wait_until,
)
from export_pipelines_tests.support.daemon import ROOT
from export_pipelines_tests.support.s3_fault_proxy import hang

ON_CI = os.environ.get("CI") == "true"
BIG = "t-big"  # several 8 MiB parts


def broker_command(env: dict[str, str], action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "broker.sh"), action],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def stack(stack_env, source_url, bucket, tmp_path_factory) -> Iterator[Stack]:
    if shutil.which("redis-server") is None and not ON_CI:
        pytest.skip("redis-server missing (scripts/test_tools.sh installs it)")
    tmp = tmp_path_factory.mktemp("cancel_celery")
    broker_env = {
        **os.environ,
        "EXPORT_BROKER_DIR": str(tmp / "broker"),
        "EXPORT_BROKER_BIND": "127.0.0.1",
        "EXPORT_BROKER_PORT": str(free_port()),
    }
    started = broker_command(broker_env, "start")
    assert started.returncode == 0, started.stderr
    urls = dict(
        line.removeprefix("export ").split("=", 1)
        for line in started.stdout.splitlines()
        if line.startswith("export ")
    )
    home = tmp / "dagster_home"
    home.mkdir()
    prefix_env = {
        "DAGSTER_CELERY_BROKER_URL": urls["DAGSTER_CELERY_BROKER_URL"].strip("'"),
        "DAGSTER_CELERY_BACKEND_URL": urls["DAGSTER_CELERY_BACKEND_URL"].strip("'"),
        "DAGSTER_COMPUTE_LOGS_PREFIX": "cancel-celery/_dagster/compute_logs",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'deploy' / 'celery'}",
    }
    worker = None
    try:
        with cancel_stack(
            stack_env,
            source_url,
            bucket,
            home,
            "dagster_cancel_celery",
            ROOT / "deploy" / "celery" / "dagster.yaml",
            **prefix_env,
        ) as (stack, env):
            log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - the worker keeps it open
            worker = subprocess.Popen(
                [str(ROOT / "scripts" / "worker.sh"), "w1", "2"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            wait_until(
                lambda: b"ready." in (tmp / "worker.log").read_bytes() or worker.poll() is not None,
                300,
                "the Celery worker to be ready",
            )
            assert worker.poll() is None, (tmp / "worker.log").read_text()[-3000:]
            yield stack
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        broker_command(broker_env, "stop")


@pytest.fixture
def check(stack, s3_client, bucket):
    return never_produced_check(stack, s3_client, bucket)


def test_celery_queued_and_streaming_exports_are_canceled_without_retry(stack, store, check):
    action = hang()  # part 2 of the big export waits here: running on the worker, mid-upload
    rule = stack.proxy.add_fault(
        lambda r: r.operation == "UploadPart" and r.part_number == 2 and f"tenant={BIG}/" in (r.key or ""),
        action,
    )
    try:
        running = stack.create(BIG)
        wait_until(lambda: rule.fired >= 1, 300, "the export to upload part 2")
        assert request_row(stack.source_url, running)["status"] == "running"
        queued = stack.create(BIG, format="jsonl")
        wait_until(
            lambda: run_status(stack.dagster_url, queued) == "QUEUED", 60, "the run to wait in the queue"
        )
        status, doc = stack.cancel(BIG, queued)
        assert status == 202 and doc["status"] == "canceled"
        status, doc = stack.cancel(BIG, running)
        assert status == 202 and doc["status"] == "canceled"
        # Terminated through the launcher (the Celery task revoked): the run ends failed or canceled.
        wait_until(
            lambda: runs_of(stack.dagster_url, running)[0]["max_retries"] == "0", 60, "the run stopped"
        )
    finally:
        action.release()
    check(BIG, queued, notified=False)
    assert check(BIG, running, notified=True) == ["pending", "queued", "running", "canceled"]


@pytest.mark.parametrize(
    ("tenant", "operation", "suffix"),
    [("t-012", "PutObject", "_SUCCESS")],
)
def test_celery_cancel_while_finalizing(stack, store, check, tenant, operation, suffix):
    action = hang()
    rule = stack.proxy.add_fault(of_tenant(operation, tenant, suffix), action)
    try:
        rid = stack.create(tenant)
        wait_until(lambda: rule.fired >= 1, 300, "finalize to write _SUCCESS")
        status, doc = stack.cancel(tenant, rid)
        assert status == 202 and doc["status"] == "canceled"
        wait_until(lambda: runs_of(stack.dagster_url, rid)[0]["max_retries"] == "0", 60, "the run stopped")
    finally:
        action.release()
    check(tenant, rid, notified=True)


def test_celery_pending_cancel(stack, store, check):
    os.kill(stack.submitter.pid, signal.SIGSTOP)
    try:
        rid = stack.create("t-013")
        status, doc = stack.cancel("t-013", rid)
    finally:
        os.kill(stack.submitter.pid, signal.SIGCONT)
    assert status == 202 and doc["status"] == "canceled"
    assert check("t-013", rid, notified=False) == ["pending", "canceled"]
