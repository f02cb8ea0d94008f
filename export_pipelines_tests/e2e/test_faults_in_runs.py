"""Faults injected into real runs of tenant_export_job (real PostgreSQL and S3): each one is ridden
over by a bounded retry that continues from the checkpoint, or ends in a clear failure with a
resumable checkpoint. Never a `succeeded` export with missing or doubled rows."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import dagster as dg
import psycopg
import pytest

from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines.orchestration.resources import ExportSettings
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines.settings import Settings
from export_pipelines_tests.support.readback import read_manifest
from export_pipelines_tests.support.services import run_export_job

BIG = "t-big"


@pytest.fixture
def resources(dagster_resources, bucket, prefix):
    # 5 MiB parts (the S3 minimum) and uncompressed CSV: the big tenant spans several parts.
    return {
        **dagster_resources,
        "export_settings": ExportSettings(bucket=bucket, prefix=prefix, part_size_mib=5),
    }


def with_statement_timeout(resources, timeout: str):
    """The resources as the code location builds them with EXPORT_STATEMENT_TIMEOUT=`timeout`."""
    seconds = Settings.from_env({"EXPORT_STATEMENT_TIMEOUT": timeout}).statement_timeout_seconds
    fields = {**resources["export_settings"].model_dump(), "statement_timeout_seconds": seconds}
    return {**resources, "export_settings": ExportSettings(**fields)}


def launch(resources, instance, **config):
    return run_export_job(
        run_config=export_run_config(**config),
        resources=resources,
        raise_on_error=False,
        instance=instance,
    )


def step_retries(instance, run_id) -> list[str]:
    """Why each step was retried (the error message of each STEP_UP_FOR_RETRY)."""
    out = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY):
        error, messages = entry.dagster_event.event_specific_data.error, []
        while error is not None:  # the policy's RetryRequested wraps the real error as its cause
            messages.append(error.message.strip())
            error = error.cause
        out.append(f"{entry.step_key}: {' <- '.join(messages)}")
    return out


def wait_until(condition, timeout: float = 60, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)


def file_digests(client, bucket, manifest) -> list[str]:
    return [
        hashlib.sha256(client.get_object(Bucket=bucket, Key=f["key"])["Body"].read()).hexdigest()
        for f in manifest["files"]
    ]


@pytest.fixture
def clean_digests(resources, s3_client, bucket):
    """sha256 of each file of an undisturbed run of the export the tests disturb."""
    result = launch(
        resources,
        dg.DagsterInstance.ephemeral(),
        tenant_id=BIG,
        resource="orders",
        format="csv",
        compression="none",
        request_id="clean",
    )
    assert result.success
    manifest = read_manifest(s3_client, bucket, result.output_for_node("exports.finalize").manifest_key)
    return file_digests(s3_client, bucket, manifest)


def test_backend_terminated_mid_export_is_retried_from_the_checkpoint(
    resources, store, source_url, s3_client, bucket, prefix, clean_digests
):
    """pg_terminate_backend on the reader's connection mid-file: the op retry continues the
    same upload after the last checkpointed part and the file equals an undisturbed run's."""
    rid = store.create(tenant_id=BIG, resource="orders", format="csv", compression="none")
    instance = dg.DagsterInstance.ephemeral()
    result: dict[str, Any] = {}
    # One part in flight: when the first part's progress update waits, at most ~14 of the file's
    # ~30 MB have been read.
    one_at_a_time = {
        **resources,
        "export_settings": ExportSettings(
            bucket=bucket, prefix=prefix, part_size_mib=5, max_parts_in_flight=1
        ),
    }
    worker = threading.Thread(
        target=lambda: result.setdefault(
            "run",
            launch(
                one_at_a_time,
                instance,
                tenant_id=BIG,
                resource="orders",
                format="csv",
                compression="none",
                request_id=rid,
            ),
        )
    )
    holder = psycopg.connect(source_url)
    worker.start()
    try:
        with psycopg.connect(source_url, autocommit=True) as watcher:
            # Once a part is checkpointed, hold the row: export_files' next progress update (the
            # next part's, or rows' within a second) then waits on it, with the reader mid-file.
            # Held before that, the first rows' progress (reported at once) would wait with no
            # part uploaded.
            wait_until(lambda: store.get(rid).status == "running", interval=0.005)
            wait_until(
                lambda: (
                    watcher.execute(
                        "SELECT count(*) FROM export_checkpoint_parts WHERE folder LIKE %s",
                        [f"{prefix}/%/{rid}/"],
                    ).fetchone()[0]
                    > 0
                ),
                interval=0.005,
            )
            holder.execute("SELECT 1 FROM export_requests WHERE id = %s FOR UPDATE", [rid])
            killed = watcher.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'export_pipelines' AND datname = current_database()"
            ).fetchone()[0]
            assert killed >= 1
    finally:
        holder.rollback()
        holder.close()
    worker.join(timeout=120)
    run = result["run"]
    assert run.success
    retries = step_retries(instance, run.run_id)
    assert any(r.startswith("exports.export_files:") and "terminat" in r for r in retries), retries
    outcome = run.output_for_node("exports.export_files")
    assert outcome.files[0].resumed_at_part is not None and outcome.files[0].resumed_at_part > 1
    manifest = read_manifest(s3_client, bucket, run.output_for_node("exports.finalize").manifest_key)
    assert file_digests(s3_client, bucket, manifest) == clean_digests
    assert open_uploads(s3_client, bucket, prefix) == []
    row = store.get(rid)
    assert row.status == "succeeded" and row.rows_exported == manifest["rows_total"]


def release_after_a_wait(source_url: str, locker: psycopg.Connection, seconds: float) -> None:
    """Roll back `locker` (releasing its lock on orders) `seconds` after another backend starts
    waiting for that lock."""
    with psycopg.connect(source_url, autocommit=True) as watcher:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'orders'::regclass"
            ).fetchone()
            if waiting and waiting[0]:
                break
            time.sleep(0.05)
    time.sleep(seconds)
    locker.rollback()


def test_statement_timeout_is_retried_then_succeeds(
    resources, source_url, s3_client, bucket, prefix, clean_digests
):
    """A query that hits statement_timeout (here: waiting on a lock) fails that attempt with
    PostgreSQL's message; the op retry runs once the lock is gone."""
    resources = with_statement_timeout(resources, "1s")
    instance = dg.DagsterInstance.ephemeral()
    locker = psycopg.connect(source_url)
    locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    # Released 1.5 s after the run's first query starts waiting on it (past the 1 s timeout), not
    # 1.5 s after now: on a busy machine the run may not reach its query before a fixed timer ends.
    release = threading.Thread(target=release_after_a_wait, args=(source_url, locker, 1.5))
    release.start()
    try:
        run = launch(
            resources,
            instance,
            tenant_id=BIG,
            resource="orders",
            format="csv",
            compression="none",
            request_id="timeout",
        )
    finally:
        release.join()
        locker.close()
    assert run.success
    retries = step_retries(instance, run.run_id)
    assert any("statement timeout" in r for r in retries), retries
    manifest = read_manifest(s3_client, bucket, run.output_for_node("exports.finalize").manifest_key)
    assert file_digests(s3_client, bucket, manifest) == clean_digests


def test_statement_timeout_every_attempt_fails_clearly_and_leaves_nothing_open(
    resources, store, source_url, s3_client, bucket, prefix
):
    resources = with_statement_timeout(resources, "200ms")
    rid = store.create(tenant_id=BIG, resource="orders", format="csv", compression="none")
    instance = dg.DagsterInstance.ephemeral()
    locker = psycopg.connect(source_url)
    try:
        locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        run = launch(
            resources,
            instance,
            tenant_id=BIG,
            resource="orders",
            format="csv",
            compression="none",
            request_id=rid,
        )
    finally:
        locker.rollback()
        locker.close()
    assert not run.success
    (failure,) = run.get_step_failure_events()
    assert failure.step_key == "exports.count_rows"
    message = failure.step_failure_data.error.message
    assert "QueryCanceled: canceling statement due to statement timeout (after 4 attempts)" in message
    assert len(step_retries(instance, run.run_id)) == 3  # the op's RetryPolicy, then it gave up
    assert open_uploads(s3_client, bucket, prefix) == []
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0)
    assert listed == 0, "nothing may be written, least of all _SUCCESS"
