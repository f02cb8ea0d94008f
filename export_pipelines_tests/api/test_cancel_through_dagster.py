"""A canceled export is never produced, whatever the moment the cancel arrives: with the real
daemon (sensors, run queue, run monitoring, run retries), the real request submitter, the API
server, PostgreSQL and S3 behind a fault proxy (its hangs hold an export at a chosen step; an
`ACCESS EXCLUSIVE` lock on the source table holds one while it counts).

For each moment: the row ends `canceled` and stays so (status history), no run is retried after
the cancel (runs per request), nothing is left in the export's folder and no multipart upload stays
open (S3), and `export.canceled` is recorded only for an export canceled while running. A finished
export answers 409; a second cancel changes nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines_tests.support.api_helpers import api_settings, key_for, migrate_api, serve
from export_pipelines_tests.support.cancel_moments import (
    FINISHED,
    assert_never_produced,
    call,
    events_of,
    history,
    request_row,
    run_status,
    runs_of,
    wait_until,
)
from export_pipelines_tests.support.daemon import ROOT, running_daemon, wait_for
from export_pipelines_tests.support.s3_fault_proxy import S3FaultProxy, error, hang

BIN = Path(sys.executable).parent
BIG = "t-big"  # several 8 MiB parts: an export that is mid-upload for as long as a part hangs
NOTIFY = {"notify": {"email": "ops@example.com"}}


@dataclass
class Stack:
    api_url: str
    source_url: str
    dagster_url: str
    prefix: str
    submitter: subprocess.Popen
    proxy: S3FaultProxy
    tokens: dict[str, str]

    def token(self, tenant: str) -> str:
        if tenant not in self.tokens:
            self.tokens[tenant] = key_for(self.source_url, tenant)
        return self.tokens[tenant]

    def create(self, tenant: str, **extra: object) -> str:
        status, doc = call(
            "POST",
            f"{self.api_url}/v1/exports",
            self.token(tenant),
            {"resource": "orders", "format": "csv", "compression": "none", **NOTIFY, **extra},
        )
        assert status == 202, doc
        return doc["id"]

    def cancel(self, tenant: str, rid: str) -> tuple[int, dict]:
        return call("POST", f"{self.api_url}/v1/exports/{rid}/cancel", self.token(tenant))

    def folder(self, tenant: str, rid: str) -> str:
        return f"{self.prefix}/tenant={tenant}/orders/{rid}/"


@pytest.fixture(scope="module")
def stack(stack_env, source_url, bucket, tmp_path_factory) -> Iterator[Stack]:
    migrate_api(source_url)
    home = tmp_path_factory.mktemp("dagster_home_cancel")
    with (
        S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as proxy,
        running_daemon(
            stack_env,
            source_url,
            bucket,
            home,
            "dagster_cancel",
            AWS_ENDPOINT_URL=proxy.endpoint_url,
            EXPORT_TENANT_STARTS_PER_MINUTE="100",
        ) as env,
    ):
        log = open(home / "submitter.log", "wb")  # noqa: SIM115 - closed below
        submitter = subprocess.Popen(
            [str(BIN / "export-pipelines"), "submitter", "--sweep-seconds", "120"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: (
                    b"listening on" in (home / "submitter.log").read_bytes() or submitter.poll() is not None
                ),
                300,  # it starts a code server first: slow on a loaded machine
                "the submitter to listen",
            )
            assert submitter.poll() is None, (home / "submitter.log").read_text()
            settings = api_settings(stack_env, source_url, bucket, env["EXPORT_PREFIX"])
            with serve(settings) as api:
                yield Stack(
                    api.url,
                    source_url,
                    env["DAGSTER_POSTGRES_URL"],
                    env["EXPORT_PREFIX"],
                    submitter,
                    proxy,
                    {},
                )
        finally:
            submitter.terminate()
            submitter.wait(timeout=30)
            log.close()


@pytest.fixture
def check(stack, s3_client, bucket):
    def never_produced(tenant: str, rid: str, *, notified: bool) -> list[str]:
        return assert_never_produced(
            source_url=stack.source_url,
            dagster_url=stack.dagster_url,
            s3_client=s3_client,
            bucket=bucket,
            folder=stack.folder(tenant, rid),
            request_id=rid,
            notified=notified,
        )

    return never_produced


@contextlib.contextmanager
def source_table_locked(source_url: str) -> Iterator[None]:
    """Every export's count waits on this lock until the block ends."""
    with psycopg.connect(source_url) as conn:
        conn.execute("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def counting_is_blocked(source_url: str) -> bool:
    with psycopg.connect(source_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%orders%' "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
    return bool(row and row[0])


def of_tenant(operation: str, tenant: str, suffix: str = ""):
    return lambda r: (
        r.operation == operation and f"tenant={tenant}/" in (r.key or "") and (r.key or "").endswith(suffix)
    )


def wait_stopping(stack: Stack, rid: str) -> None:
    """Until the cancel sensor has asked the run to stop (or it already ended)."""
    wait_until(
        lambda: run_status(stack.dagster_url, rid) in FINISHED | {"CANCELING"}, 120, "the run to be stopped"
    )


def test_pending_cancel_is_at_once_and_tells_nobody(stack, store, check):
    # The submitter paused: the row stays pending until the request sensor's next tick (2 s).
    os.kill(stack.submitter.pid, signal.SIGSTOP)
    try:
        rid = stack.create("t-001")
        status, doc = stack.cancel("t-001", rid)
    finally:
        os.kill(stack.submitter.pid, signal.SIGCONT)
    assert status == 202 and doc["status"] == "canceled", doc
    assert doc["error"]["message"] == "canceled before it started"
    assert check("t-001", rid, notified=False) == ["pending", "canceled"]
    assert runs_of(stack.dagster_url, rid) == []


def test_cancel_right_after_create_races_the_submitter(stack, store, check):
    rid = stack.create("t-010")
    status, doc = stack.cancel("t-010", rid)
    assert status == 202 and doc["status"] == "canceled", doc
    seen = check("t-010", rid, notified=False)
    assert "running" not in seen, seen  # pending or queued when the cancel came


def test_queued_run_and_streaming_run_and_cancel_twice(stack, store, check, s3_client, bucket):
    action = hang()  # part 2 of the big export waits here: running, mid-upload
    rule = stack.proxy.add_fault(
        lambda r: r.operation == "UploadPart" and r.part_number == 2 and f"tenant={BIG}/" in (r.key or ""),
        action,
    )
    try:
        running = stack.create(BIG)
        wait_until(lambda: rule.fired >= 1, 180, "the export to upload part 2")
        assert request_row(stack.source_url, running)["status"] == "running"
        # Queued: one run per tenant, so the second waits in Dagster's run queue.
        queued = stack.create(BIG, format="jsonl")
        wait_until(
            lambda: run_status(stack.dagster_url, queued) == "QUEUED", 60, "the run to wait in the queue"
        )
        status, doc = stack.cancel(BIG, queued)
        assert status == 202 and doc["status"] == "canceled"
        wait_until(lambda: run_status(stack.dagster_url, queued) == "CANCELED", 60, "the queued run canceled")

        status, doc = stack.cancel(BIG, running)
        assert status == 202 and doc["status"] == "canceled" and doc["error"]["code"] == "canceled"
        again, doc2 = stack.cancel(BIG, running)  # twice: nothing changes, nobody is told twice
        assert again == 202 and doc2["status"] == "canceled"
        wait_stopping(stack, running)
    finally:
        action.release()
    check(BIG, queued, notified=False)
    assert check(BIG, running, notified=True) == ["pending", "queued", "running", "canceled"]
    assert events_of(stack.source_url, running) == ["export.canceled"]
    assert all(r["max_retries"] == "0" for r in runs_of(stack.dagster_url, running))


def test_cancel_while_the_run_starts(stack, store, check):
    with source_table_locked(stack.source_url):
        rid = stack.create("t-002")
        seen = wait_until(
            lambda: (
                run_status(stack.dagster_url, rid) in ("STARTING", "STARTED")
                and run_status(stack.dagster_url, rid)
            ),
            120,
            "the run to start",
            every=0.05,
        )
        status, doc = stack.cancel("t-002", rid)
        assert status == 202 and doc["status"] == "canceled"
        wait_stopping(stack, rid)
    print(f"\ncanceled while the run was {seen}")
    check("t-002", rid, notified=False)
    # Stopped so that run retries never restart it, even when it was failed from outside.
    assert [r["max_retries"] for r in runs_of(stack.dagster_url, rid)] == ["0"]


def test_cancel_while_counting(stack, store, check):
    with source_table_locked(stack.source_url):
        rid = stack.create("t-003")
        wait_until(lambda: counting_is_blocked(stack.source_url), 120, "count_rows to wait on the table")
        assert request_row(stack.source_url, rid)["status"] == "queued"
        status, doc = stack.cancel("t-003", rid)
        assert status == 202 and doc["status"] == "canceled"
        wait_stopping(stack, rid)
    check("t-003", rid, notified=False)


@pytest.mark.parametrize(
    ("tenant", "operation", "suffix", "moment"),
    [
        ("t-006", "CompleteMultipartUpload", ".csv", "the last part uploaded, the file being completed"),
        ("t-007", "PutObject", "manifest.json", "finalizing: the manifest being written"),
        ("t-008", "PutObject", "_SUCCESS", "finalizing: _SUCCESS being written"),
    ],
)
def test_cancel_at_the_end_of_an_export(stack, store, check, tenant, operation, suffix, moment):
    action = hang()
    rule = stack.proxy.add_fault(of_tenant(operation, tenant, suffix), action)
    try:
        rid = stack.create(tenant)
        wait_until(lambda: rule.fired >= 1, 180, moment)
        assert request_row(stack.source_url, rid)["status"] == "running"
        status, doc = stack.cancel(tenant, rid)
        assert status == 202 and doc["status"] == "canceled"
        wait_stopping(stack, rid)
    finally:
        action.release()  # whatever the run still writes, the cancel sensor deletes
    check(tenant, rid, notified=True)


def test_cancel_racing_the_notify_commit(stack, store, check):
    """The operator's door (the store's cancel, as the CLI uses it) commits while the notify op's
    `succeeded` waits on the row: the notify op finds the row canceled and commits nothing."""
    tenant = "t-009"
    action = hang()
    rule = stack.proxy.add_fault(of_tenant("PutObject", tenant, "_SUCCESS"), action)
    try:
        rid = stack.create(tenant)
        wait_until(lambda: rule.fired >= 1, 180, "finalize to write _SUCCESS")
        with psycopg.connect(stack.source_url, autocommit=True) as conn, conn.transaction():
            conn.execute("SELECT 1 FROM export_requests WHERE id = %s FOR UPDATE", [rid])
            action.release()
            wait_until(lambda: notify_waits(stack.source_url), 120, "the notify op to wait on the row")
            row = RequestStore.on(conn).cancel(rid, None)
            assert row is not None and row.status == "canceled"
    finally:
        action.release()
    wait_until(lambda: run_status(stack.dagster_url, rid) in FINISHED, 120, "the run to end")
    assert run_status(stack.dagster_url, rid) == "FAILURE"  # as canceled, never SUCCESS
    check(tenant, rid, notified=True)


def notify_waits(source_url: str) -> bool:
    with psycopg.connect(source_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE '%status = ''succeeded''%' AND pid <> pg_backend_pid()"
        ).fetchone()
    return bool(row and row[0])


def test_finished_exports_answer_409(stack, store, s3_client, bucket):
    done = stack.create("t-004")
    row, _ = wait_for(store, done)
    assert row.status == "succeeded"
    # A failure: S3 refuses every upload of this tenant (access denied is not retried).
    rule = stack.proxy.add_fault(
        of_tenant("CreateMultipartUpload", "t-005"), error(403, "AccessDenied"), times=None
    )
    try:
        failed = stack.create("t-005")
        row, _ = wait_for(store, failed)
        assert row.status == "failed"
    finally:
        stack.proxy.clear_faults()
    assert rule.fired >= 1
    for tenant, rid, status_now in (("t-004", done, "succeeded"), ("t-005", failed, "failed")):
        status, doc = stack.cancel(tenant, rid)
        assert status == 409 and doc["error"]["code"] == "not_cancelable", doc
        assert request_row(stack.source_url, rid)["status"] == status_now
        assert "canceled" not in history(stack.source_url, rid)
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=stack.folder("t-004", done)).get("KeyCount", 0)
    assert listed > 0  # the succeeded export keeps its files
