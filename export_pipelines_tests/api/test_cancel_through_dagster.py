"""A canceled export is never produced, whatever the moment the cancel arrives: with the real
daemon (sensors, run queue, run monitoring, run retries), the real request submitter, the API
server, PostgreSQL and S3 behind a fault proxy (its hangs hold an export at a chosen step; an
`ACCESS EXCLUSIVE` lock on the source table holds one while it counts).

For each moment: the row ends `canceled` and stays so (status history), no run is retried after
the cancel (runs per request), nothing is left in the export's folder and no multipart upload stays
open (S3), and `export.canceled` is recorded only for an export canceled while running. A finished
export answers 409; a second cancel changes nothing."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import psycopg
import pytest

from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines_tests.support.cancel_moments import (
    FINISHED,
    Stack,
    cancel_stack,
    counting_is_blocked,
    events_of,
    history,
    never_produced_check,
    of_tenant,
    request_row,
    run_status,
    runs_of,
    source_table_locked,
    stopped_by_its_own_check,
    wait_stopping,
    wait_until,
)
from export_pipelines_tests.support.daemon import wait_for
from export_pipelines_tests.support.s3_fault_proxy import error, hang

BIG = "t-big"  # several 8 MiB parts: an export that is mid-upload for as long as a part hangs


@pytest.fixture(scope="module")
def stack(stack_env, source_url, bucket, tmp_path_factory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("dagster_home_cancel")
    with cancel_stack(stack_env, source_url, bucket, home, "dagster_cancel") as (stack, _):
        yield stack


@pytest.fixture
def check(stack, s3_client, bucket):
    return never_produced_check(stack, s3_client, bucket)


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
    # Nothing restarts it: stopped by the cancel sensor, which first tags it max_retries=0 (a run
    # terminated while starting is failed from outside, which run retries would re-run), or, when
    # its first step's check saw the cancel before the sensor's tick, failed by that step.
    (run,) = runs_of(stack.dagster_url, rid)
    assert run["max_retries"] == "0" or stopped_by_its_own_check(stack.dagster_url, run["run_id"]), run


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
