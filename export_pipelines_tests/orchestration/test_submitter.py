"""The request submitter (`export-pipelines submitter`): a request's run is queued the moment its
row is inserted, not at the request sensor's next tick. That the two never both start a row is checked
in test_request_sensor.py, where no submitter runs.
The daemon here ticks its sensors once an hour, so whatever starts within the test was started by
the submitter, on the insert trigger's NOTIFY (its own sweep is slower than the bound asserted).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from export_pipelines.orchestration import tags
from export_pipelines_tests.support.daemon import ROOT, running_daemon, wait_for
from export_pipelines_tests.support.readback import csv_rows, read_manifest

BIN = Path(sys.executable).parent
SWEEP_SECONDS = 120


@pytest.fixture(scope="module")
def submitter(stack_env, source_url, bucket, tmp_path_factory) -> Iterator[tuple[dict[str, str], Path]]:
    home = tmp_path_factory.mktemp("dagster_home_submitter")
    with running_daemon(
        stack_env, source_url, bucket, home, "dagster_submitter", EXPORT_SENSOR_INTERVAL_SECONDS="3600"
    ) as env:
        log = open(home / "submitter.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [str(BIN / "export-pipelines"), "submitter", "--sweep-seconds", str(SWEEP_SECONDS)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while b"listening on" not in (home / "submitter.log").read_bytes():
                assert proc.poll() is None, (home / "submitter.log").read_text()
                assert time.monotonic() < deadline, (home / "submitter.log").read_text()
                time.sleep(0.2)
            yield env, home
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


def runs_of(home: Path, env: dict[str, str], request_id: str) -> list[dg.DagsterRun]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_POSTGRES_URL", env["DAGSTER_POSTGRES_URL"])
        with dg.DagsterInstance.from_config(str(home)) as instance:
            return list(instance.get_runs(filters=dg.RunsFilter(tags={tags.REQUEST_ID: request_id})))


def test_inserted_request_starts_without_waiting_for_the_sensor(submitter, store, s3_client, bucket, pg):
    env, home = submitter
    started = time.monotonic()
    rid = store.create(tenant_id="t-005", resource="orders", format="csv")
    row, seconds = wait_for(store, rid, timeout=SWEEP_SECONDS - 30)
    assert row.status == "succeeded", row.error
    print(f"\nrequest → succeeded through the submitter in {seconds:.1f}s")
    assert time.monotonic() - started < SWEEP_SECONDS - 30  # the NOTIFY, not a sweep, started it
    (run,) = runs_of(home, env, rid)
    # Under the request sensor's name and run key: the sensor's own check sees the run.
    assert run.tags["dagster/sensor_name"] == "export_request_sensor"
    assert run.tags["dagster/run_key"] == f"{rid}:1" and run.tags[tags.TENANT] == "t-005"
    manifest = read_manifest(s3_client, bucket, row.manifest_key)
    _, rows = csv_rows(s3_client, bucket, manifest)
    expected = pg.execute("SELECT count(*) FROM orders WHERE tenant_id = 't-005'").fetchone()[0]
    assert len(rows) == expected == row.rows_exported > 0


def test_invalid_request_is_failed_at_once_with_the_field_named(submitter, store):
    rid = store.create(tenant_id="t-005", resource="orders", format="csv", columns=["id", "no_such_col"])
    row, _ = wait_for(store, rid, timeout=30)
    assert row.status == "failed" and row.run_id is None and row.error_code == "invalid_request"
    assert "no_such_col" in row.error and "columns" in row.error


def test_burst_from_many_tenants_gets_one_run_each(submitter, store):
    env, home = submitter
    ids = [store.create(tenant_id=f"t-{n:03d}", resource="orders", format="jsonl") for n in range(6, 14)]
    for rid in ids:
        row, _ = wait_for(store, rid, timeout=SWEEP_SECONDS - 30)
        assert row.status == "succeeded", row.error
        assert len(runs_of(home, env, rid)) == 1


def test_sigterm_stops_a_submitter_started_as_a_background_job_of_a_script(submitter):
    """Fails on the old submitter: Dagster maps SIGTERM to SIGINT's handler, which a script's
    background job inherits as ignored, so `kill` did nothing."""
    env, home = submitter
    log = home / "background-submitter.log"
    script = (
        f"'{BIN / 'export-pipelines'}' submitter --sweep-seconds {SWEEP_SECONDS} > '{log}' 2>&1 &\n"
        "echo $!\n"
        "wait\n"
    )
    shell = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert shell.stdout is not None
    pid = int(shell.stdout.readline())
    try:
        deadline = time.monotonic() + 120
        while b"listening on" not in (log.read_bytes() if log.exists() else b""):
            assert shell.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
        shell.wait(timeout=60)  # the script's `wait` returns once its background job ended
        assert "signal SIGTERM: stopping" in log.read_text()
    finally:
        if shell.poll() is None:  # the submitter ignored the signal: do not leave it running
            os.kill(pid, signal.SIGKILL)
            shell.wait(timeout=30)
