"""Resume: an export interrupted after some parts continues from its checkpoint, and its files are
byte for byte those of an uninterrupted run of the same export (real PostgreSQL and S3)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import psycopg
import pytest

from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.results import ExportOutcome
from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines_tests.support.readback import read_manifest

BIG = "t-big"
PART = 5 << 20  # the S3 minimum: the most parts per file


class Crash(Exception):
    """Stands in for the process dying right after a part was checkpointed."""


def sha256_of(client: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


@pytest.fixture
def checkpoints(source_url):
    store = CheckpointStore(source_url).migrate_once()
    yield store
    store.close()


def plan_for(catalog, source_url, prefix, export_id, checkpoints=None, **kwargs):
    request = build_request(catalog, resource="orders", tenant_id=BIG, export_id=export_id, **kwargs)
    return plan_export(source_url, catalog, request, prefix, checkpoints=checkpoints)


def run(plan, catalog, source_url, client, bucket, checkpoints=None, crash_after_parts=None, progress=None):
    seen = 0

    def on_progress(p):
        nonlocal seen
        seen += 1
        if progress is not None:
            progress.append(p)
        if crash_after_parts is not None and seen >= crash_after_parts:
            raise Crash(f"crash after {seen} parts")

    clear_success_marker(client, bucket, plan.location)
    return run_export(
        plan,
        conninfo=source_url,
        catalog=catalog,
        s3_client=client,
        bucket=bucket,
        part_size=PART,
        on_progress=on_progress,
        checkpoints=checkpoints,
        abort_on_error=False,
    )


def file_hashes(client, bucket, outcome: ExportOutcome) -> list[tuple[str, str, int]]:
    return [(f.key.rsplit("/", 1)[-1], sha256_of(client, bucket, f.key), f.rows) for f in outcome.files]


def clean_run(catalog, source_url, client, bucket, prefix, **kwargs):
    plan = plan_for(catalog, source_url, prefix, "clean", **kwargs)
    outcome = run(plan, catalog, source_url, client, bucket)
    return plan, outcome, file_hashes(client, bucket, outcome)


@pytest.mark.parametrize(
    ("kwargs", "crash_after"),
    [
        ({"format": "csv", "compression": "none"}, 2),  # mid-file: continues the same upload
        ({"format": "csv", "compression": "gzip", "max_rows_per_file": 40_000}, 2),  # second file
        ({"format": "parquet", "max_rows_per_file": 40_000}, 2),  # Parquet: at the file boundary
        ({"format": "json", "compression": "none"}, 2),  # one JSON array continued mid-way
        ({"format": "jsonl", "compression": "none"}, 1),
    ],
    ids=["csv-mid-file", "csv-gzip-files", "parquet-files", "json-mid-file", "jsonl-mid-file"],
)
def test_interrupted_export_resumes_byte_identical(
    kwargs, crash_after, catalog, source_url, s3_client, bucket, prefix, checkpoints, pg
):
    clean_plan, clean, expected = clean_run(catalog, source_url, s3_client, bucket, prefix, **kwargs)
    assert sum(f.parts for f in clean.files) > crash_after, "the export must span more parts than the crash"

    plan = plan_for(catalog, source_url, prefix, "resumed", checkpoints, **kwargs)
    assert not plan.resumed
    with pytest.raises(Crash):
        run(plan, catalog, source_url, s3_client, bucket, checkpoints, crash_after_parts=crash_after)
    assert open_uploads(s3_client, bucket, plan.location.folder), "the crash left its upload open"
    complete_before = {
        f.key: s3_client.head_object(Bucket=bucket, Key=f.key)["LastModified"]
        for f in checkpoints.files(plan.location.folder, plan.key_type)
        if f.complete
    }

    # Rows that arrive between the crash and the resume are above the high-water mark: out.
    pg.execute(
        "INSERT INTO orders (tenant_id, id, created_at, status, amount, currency) "
        "SELECT %s, id + 10000000, created_at, status, amount, currency FROM orders "
        "WHERE tenant_id = %s ORDER BY id DESC LIMIT 50",
        [BIG, BIG],
    )
    try:
        again = plan_for(catalog, source_url, prefix, "resumed", checkpoints, **kwargs)
        assert again.resumed and again.high_water_mark == clean_plan.high_water_mark
        assert again.rows_total == clean_plan.rows_total
        progress: list[Any] = []
        outcome = run(again, catalog, source_url, s3_client, bucket, checkpoints, progress=progress)
    finally:
        pg.execute("DELETE FROM orders WHERE tenant_id = %s AND id > 10000000", [BIG])

    assert file_hashes(s3_client, bucket, outcome) == expected
    assert [f.sha256 for f in outcome.files] == [f.sha256 for f in clean.files]
    assert outcome.rows == clean.rows == clean_plan.rows_total
    # Progress carries on from the checkpoint: it never restarts at zero.
    assert progress[0].rows_exported > 0 and progress[-1].rows_exported == clean.rows
    for key, modified in complete_before.items():  # finished files were not uploaded again
        assert s3_client.head_object(Bucket=bucket, Key=key)["LastModified"] == modified
    if kwargs["format"] != "parquet" and "max_rows_per_file" not in kwargs:
        assert outcome.files[0].resumed_at_part == crash_after + 1

    done = finalize_export(s3_client, bucket, again, outcome, checkpoints)
    manifest = read_manifest(s3_client, bucket, done.manifest_key)
    assert manifest["high_water_mark"] == clean_plan.high_water_mark
    assert manifest["resumable_at"] == ("file" if kwargs["format"] == "parquet" else "part")
    assert open_uploads(s3_client, bucket, plan.location.folder) == []
    assert checkpoints.cut(plan.location.folder, plan.key_type) is None  # done: next run starts afresh


def test_changed_request_does_not_reuse_the_checkpoint(
    catalog, source_url, s3_client, bucket, prefix, checkpoints
):
    plan = plan_for(catalog, source_url, prefix, "changed", checkpoints, format="csv", compression="none")
    with pytest.raises(Crash):
        run(plan, catalog, source_url, s3_client, bucket, checkpoints, crash_after_parts=1)
    other = plan_for(
        catalog, source_url, prefix, "changed", checkpoints, format="csv", compression="none", columns=["id"]
    )
    assert not other.resumed and other.fingerprint != plan.fingerprint
    outcome = run(other, catalog, source_url, s3_client, bucket, checkpoints)
    body = s3_client.get_object(Bucket=bucket, Key=outcome.files[0].key)["Body"].read()
    assert body.splitlines()[0] == b"id" and len(body.splitlines()) == outcome.rows + 1
    assert open_uploads(s3_client, bucket, plan.location.folder) == []  # the old upload was aborted


def test_upload_gone_restarts_the_file(catalog, source_url, s3_client, bucket, prefix, checkpoints):
    """The janitor (or a person) aborted the open upload: the file is written again from its start."""
    kwargs = {"format": "csv", "compression": "none"}
    _, _, expected = clean_run(catalog, source_url, s3_client, bucket, prefix, **kwargs)
    plan = plan_for(catalog, source_url, prefix, "gone", checkpoints, **kwargs)
    with pytest.raises(Crash):
        run(plan, catalog, source_url, s3_client, bucket, checkpoints, crash_after_parts=2)
    for upload in open_uploads(s3_client, bucket, plan.location.folder):
        s3_client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    again = plan_for(catalog, source_url, prefix, "gone", checkpoints, **kwargs)
    outcome = run(again, catalog, source_url, s3_client, bucket, checkpoints)
    assert file_hashes(s3_client, bucket, outcome) == expected
    assert outcome.files[0].resumed_at_part is None


def test_sigkilled_export_process_resumes(
    catalog, source_url, s3_client, bucket, prefix, checkpoints, stack_env, s3_client_settings
):
    """A real process, killed with SIGKILL mid-file; the next attempt continues its upload."""
    kwargs = {"format": "csv", "compression": "none"}
    _, _, expected = clean_run(catalog, source_url, s3_client, bucket, prefix, **kwargs)
    plan = plan_for(catalog, source_url, prefix, "killed", checkpoints, **kwargs)
    script = textwrap.dedent(
        f"""
        import time
        from export_pipelines.core.requests.catalog import load_catalog
        from export_pipelines.core.engine.checkpoints import CheckpointStore
        from export_pipelines.core.engine.exporter import run_export
        from export_pipelines.core.engine.plan import plan_export
        from export_pipelines.core.requests.request import build_request
        from export_pipelines.core.storage.s3 import make_s3_client
        catalog = load_catalog()
        request = build_request(catalog, resource="orders", tenant_id={BIG!r}, export_id="killed",
                                format="csv", compression="none")
        store = CheckpointStore({source_url!r})
        plan = plan_export({source_url!r}, catalog, request, {prefix!r}, checkpoints=store)
        # Slow each part down so the test can kill the process between two of them.
        run_export(plan, conninfo={source_url!r}, catalog=catalog, s3_client=make_s3_client(**{s3_client_settings!r}),
                   bucket={bucket!r}, part_size={PART}, checkpoints=store, abort_on_error=False,
                   on_progress=lambda p: time.sleep(1.0))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **stack_env})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with psycopg.connect(source_url, autocommit=True) as conn:
                parts = conn.execute(
                    "SELECT count(*) FROM export_checkpoint_parts WHERE folder = %s", [plan.location.folder]
                ).fetchone()[0]
            if parts >= 2 or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the export finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    again = plan_for(catalog, source_url, prefix, "killed", checkpoints, **kwargs)
    assert again.resumed
    outcome = run(again, catalog, source_url, s3_client, bucket, checkpoints)
    assert outcome.files[0].resumed_at_part is not None and outcome.files[0].resumed_at_part >= 3
    assert file_hashes(s3_client, bucket, outcome) == expected
    finalize_export(s3_client, bucket, again, outcome, checkpoints)
    assert open_uploads(s3_client, bucket, plan.location.folder) == []


def test_completed_but_unrecorded_file_is_kept_and_the_next_continues(
    catalog, source_url, s3_client, bucket, prefix, checkpoints, pg
):
    """The crash came between CompleteMultipartUpload and recording it: the upload is gone but
    the object carries our token, so file 1 counts as complete and file 2 starts after its last key."""
    kwargs = {"format": "csv", "compression": "gzip", "max_rows_per_file": 40_000}
    _, _, expected = clean_run(catalog, source_url, s3_client, bucket, prefix, **kwargs)
    plan = plan_for(catalog, source_url, prefix, "unrecorded", checkpoints, **kwargs)
    run(plan, catalog, source_url, s3_client, bucket, checkpoints)
    folder = plan.location.folder
    pg.execute("DELETE FROM export_checkpoint_files WHERE folder = %s AND file_number > 1", [folder])
    pg.execute(
        "UPDATE export_checkpoint_files SET status = 'uploading', upload_id = 'completed-long-ago', "
        "rows = NULL, bytes = NULL, parts = NULL, sha256 = NULL, first_key = NULL, last_key = NULL "
        "WHERE folder = %s AND file_number = 1",
        [folder],
    )
    again = plan_for(catalog, source_url, prefix, "unrecorded", checkpoints, **kwargs)
    outcome = run(again, catalog, source_url, s3_client, bucket, checkpoints)
    assert file_hashes(s3_client, bucket, outcome) == expected
