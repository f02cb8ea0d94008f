"""SIGKILL the run worker at each point of an export, with the real daemon and dagster.yaml's run
monitoring and run retries: the export reaches `succeeded` by itself, its files equal an
undisturbed run's byte for byte, and no multipart upload is left open.

The export is held at the chosen point by S3FaultProxy (in front of the real S3 server), which
keeps one request hanging, unforwarded, until the worker is dead. Steps run inside the run
worker (in_process_executor), so the run worker is also the step process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines_tests.support.daemon import ROOT, running_daemon, wait_for
from export_pipelines_tests.support.readback import read_manifest
from export_pipelines_tests.support.s3_fault_proxy import S3FaultProxy, hang

BIG = "t-big"
CONFIG = {"tenant_id": BIG, "resource": "orders", "format": "csv", "compression": "none"}


def key_ends(operation: str, suffix: str):
    return lambda r: r.operation == operation and (r.key or "").endswith(suffix)


def part(number: int):
    return lambda r: r.operation == "UploadPart" and r.part_number == number


# kill point → (the request held while the worker is killed, extra run config)
POINTS: dict[str, tuple[Any, dict[str, Any]]] = {
    "after-count": (key_ends("DeleteObject", "/_SUCCESS"), {}),
    "mid-file": (part(2), {}),
    "between-files": (key_ends("CreateMultipartUpload", "part-00002.csv"), {"max_rows_per_file": 40_000}),
    "after-last-part-before-complete": (lambda r: r.operation == "CompleteMultipartUpload", {}),
    "after-complete-before-manifest": (key_ends("PutObject", "/manifest.json"), {}),
}


@pytest.fixture(scope="module")
def proxy(stack_env) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as p:
        yield p


@pytest.fixture(scope="module")
def daemon(stack_env, source_url, bucket, proxy, tmp_path_factory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("dagster_home_kill")
    with running_daemon(
        stack_env, source_url, bucket, home, "dagster_kill", AWS_ENDPOINT_URL=proxy.endpoint_url
    ) as env:
        yield env


def clean_digests(catalog, source_url, client, bucket, prefix, extra: dict[str, Any]) -> list[str]:
    request = build_request(catalog, export_id="clean", **{**CONFIG, **extra})
    plan = plan_export(source_url, catalog, request, prefix)
    outcome = run_export(plan, conninfo=source_url, catalog=catalog, s3_client=client, bucket=bucket)
    finalize_export(client, bucket, plan, outcome)
    return [f.sha256 for f in outcome.files]


def launch(env: dict[str, str], request_id: str, extra: dict[str, Any]) -> None:
    """Launch through the instance's run queue, as the UI or the sensor would."""
    config = export_run_config(**{**CONFIG, **extra, "request_id": request_id})
    tags = {"export/request_id": request_id, "tenant": BIG}
    subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "job",
            "launch",
            "-w",
            str(ROOT / "workspace.yaml"),
            "-j",
            "tenant_export_job",
            "--config-json",
            json.dumps(config),
            "--tags",
            json.dumps(tags),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def wait_until(condition, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def worker_pid(source_url: str, folder: str) -> int | None:
    with psycopg.connect(source_url, autocommit=True) as conn:
        row = conn.execute("SELECT worker FROM export_checkpoints WHERE folder = %s", [folder]).fetchone()
    if not row or not row[0]:
        return None
    host, pid = row[0].rsplit(":", 1)
    assert host == socket.gethostname()
    return int(pid)


def checkpointed_parts(source_url: str, folder: str) -> int:
    with psycopg.connect(source_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM export_checkpoint_parts WHERE folder = %s", [folder]
        ).fetchone()[0]


@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS))
def test_killed_run_worker_resumes_by_itself(
    point, daemon, proxy, store, catalog, source_url, s3_client, bucket, prefix
):
    held, extra = POINTS[point]
    expected = clean_digests(catalog, source_url, s3_client, bucket, prefix, extra)
    rid = store.create(tenant_id=BIG, resource="orders", format="csv", compression="none")
    assert store.mark_queued(rid, 1)  # launched below with run config the request table lacks
    folder = f"{daemon['EXPORT_PREFIX']}/tenant={BIG}/orders/{rid}/"
    action = hang()
    rule = proxy.add_fault(lambda r: held(r) and (r.key or "").startswith(folder), action)
    try:
        launch(daemon, rid, extra)
        wait_until(lambda: rule.fired == 1, what=f"the export to reach {point}")
        if point == "mid-file":
            wait_until(lambda: checkpointed_parts(source_url, folder) >= 1, what="part 1's checkpoint")
        pid = worker_pid(source_url, folder)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        action.release()  # the held request is reset, never forwarded
    row, _ = wait_for(store, rid, timeout=240)
    recovered = time.monotonic() - killed_at
    assert row.status == "succeeded", row.error
    print(f"\n{point}: killed worker {pid}; succeeded {recovered:.1f}s later")
    manifest = read_manifest(s3_client, bucket, row.manifest_key)
    assert [f["sha256"] for f in manifest["files"]] == expected
    digests = [
        hashlib.sha256(s3_client.get_object(Bucket=bucket, Key=f["key"])["Body"].read()).hexdigest()
        for f in manifest["files"]
    ]
    assert digests == expected
    assert row.rows_exported == manifest["rows_total"] == row.rows_total
    assert open_uploads(s3_client, bucket, folder) == []
