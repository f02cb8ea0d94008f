"""Checks shared by the cancel tests (default launcher and Celery launcher): after a cancel, the
export is never produced, whatever the moment it arrived."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve
from export_pipelines_tests.support.daemon import ROOT, running_daemon
from export_pipelines_tests.support.s3_fault_proxy import S3FaultProxy

BIN = Path(sys.executable).parent
NOTIFY = {"notify": {"email": "ops@example.com"}}
# Dagster run statuses of a run that has finished.
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def call(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=auth(token))
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def runs_of(dagster_url: str, request_id: str) -> list[dict[str, Any]]:
    """Every Dagster run serving the request (retries copy the tags), oldest first."""
    with psycopg.connect(dagster_url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(
            """
            SELECT r.run_id, r.status, r.create_timestamp,
                   (SELECT value FROM run_tags m WHERE m.run_id = r.run_id AND m.key = 'dagster/max_retries')
                       AS max_retries
            FROM runs r JOIN run_tags t ON t.run_id = r.run_id
            WHERE t.key = 'export/request_id' AND t.value = %s
            ORDER BY r.id
            """,
            [request_id],
        ).fetchall()


def stopped_by_its_own_check(dagster_url: str, run_id: str) -> bool:
    """The run failed at a step that found its request canceled (a commit point's check): an op's
    failure, which run retries never re-run (`retry_on_asset_or_op_failure: false`)."""
    with psycopg.connect(dagster_url, autocommit=True) as conn:
        return (
            conn.execute(
                "SELECT 1 FROM event_logs WHERE run_id = %s AND dagster_event_type = 'STEP_FAILURE'"
                " AND event LIKE %s LIMIT 1",
                [run_id, "%was canceled%"],
            ).fetchone()
            is not None
        )


def run_status(dagster_url: str, request_id: str) -> str | None:
    runs = runs_of(dagster_url, request_id)
    return runs[-1]["status"] if runs else None


def request_row(source_url: str, request_id: str) -> dict[str, Any]:
    with psycopg.connect(source_url, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute("SELECT * FROM export_requests WHERE id = %s", [request_id]).fetchone()
    assert row is not None
    return row


def history(source_url: str, request_id: str) -> list[str]:
    """The statuses the row took, in order."""
    with psycopg.connect(source_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT to_status FROM export_request_status_history WHERE request_id = %s ORDER BY id",
            [request_id],
        ).fetchall()
    return [r[0] for r in rows]


def events_of(source_url: str, request_id: str) -> list[str]:
    with psycopg.connect(source_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT event FROM export_deliveries WHERE request_id = %s ORDER BY id", [request_id]
        ).fetchall()
    return [r[0] for r in rows]


def assert_never_produced(
    *,
    source_url: str,
    dagster_url: str,
    s3_client: Any,
    bucket: str,
    folder: str,
    request_id: str,
    notified: bool,
    max_runs: int = 1,
) -> list[str]:
    """The export ended `canceled` and stays so: no status after `canceled` (never `succeeded`), no
    run retried after the cancel (at most one run, finished, never a success), nothing under its
    folder and no open multipart upload once the cancel sensor is done; `export.canceled` recorded
    once when it was canceled while running, nothing otherwise. Returns the status history."""

    def cleaned_up() -> bool:
        row = request_row(source_url, request_id)
        runs = runs_of(dagster_url, request_id)
        return not row["cancel_cleanup_pending"] and all(r["status"] in FINISHED for r in runs)

    wait_until(cleaned_up, 240, f"the cancel sensor to finish request {request_id}", every=0.5)
    row = request_row(source_url, request_id)
    assert row["status"] == "canceled" and row["error_code"] == "canceled", row
    seen = history(source_url, request_id)
    assert seen[-1] == "canceled" and seen.count("canceled") == 1, seen
    assert "succeeded" not in seen, seen
    runs = runs_of(dagster_url, request_id)
    assert len(runs) <= max_runs, f"runs after the cancel (a retry?): {runs}"
    assert all(r["status"] != "SUCCESS" for r in runs), runs
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=folder).get("Contents", [])
    assert [o["Key"] for o in listed] == [], f"files left under {folder}"
    assert open_uploads(s3_client, bucket, folder) == []
    assert events_of(source_url, request_id) == (["export.canceled"] if notified else [])
    # A few sensor intervals later, still nothing: no retry came, nothing was written again.
    time.sleep(3)
    assert len(runs_of(dagster_url, request_id)) == len(runs)
    assert history(source_url, request_id) == seen
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=folder).get("KeyCount", 0) == 0
    return seen


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


@contextlib.contextmanager
def cancel_stack(
    stack_env: dict[str, str],
    source_url: str,
    bucket: str,
    home: Path,
    dagster_db: str,
    dagster_yaml: Path = ROOT / "dagster.yaml",
    **extra_env: str,
) -> Iterator[tuple[Stack, dict[str, str]]]:
    """The daemon (its S3 behind a fault proxy), the request submitter and the API server; yields
    the stack and the environment the runs see."""
    migrate_api(source_url)
    with (
        S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as proxy,
        running_daemon(
            stack_env,
            source_url,
            bucket,
            home,
            dagster_db,
            dagster_yaml,
            AWS_ENDPOINT_URL=proxy.endpoint_url,
            EXPORT_TENANT_STARTS_PER_MINUTE="100",
            **extra_env,
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
                yield (
                    Stack(
                        api.url,
                        source_url,
                        env["DAGSTER_POSTGRES_URL"],
                        env["EXPORT_PREFIX"],
                        submitter,
                        proxy,
                        {},
                    ),
                    env,
                )
        finally:
            submitter.terminate()
            submitter.wait(timeout=30)
            log.close()


def never_produced_check(stack: Stack, s3_client: Any, bucket: str) -> Callable[..., list[str]]:
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
