"""The export API under test: a real uvicorn server in a thread, on the test database and bucket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from export_pipelines.api.app import create_app
from export_pipelines.api.server import uvicorn_options
from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.requests.api_keys import ApiKeyStore
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.storage.migrations import migrate
from export_pipelines.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningApi:
    url: str
    settings: Settings
    server: uvicorn.Server


@contextmanager
def serve(settings: Settings) -> Iterator[RunningApi]:
    """The app under uvicorn on a free port, stopped at the end."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            **uvicorn_options(settings.api_max_header_bytes),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield RunningApi(f"http://127.0.0.1:{port}", settings, server)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


# The functional tests make many requests with one key in a second; the rate limits have tests of
# their own (security/test_hostile_clients.py), with low limits.
UNLIMITED = {
    "EXPORT_API_RATE_LIMIT_PER_KEY": "100000/second",
    "EXPORT_API_RATE_LIMIT_PER_TENANT": "100000/second",
}


def api_settings(
    stack_env: dict[str, str], source_url: str, bucket: str, prefix: str, **extra: str
) -> Settings:
    env = {
        **UNLIMITED,
        **stack_env,
        "SOURCE_DATABASE_URL": source_url,
        "EXPORT_BUCKET": bucket,
        "EXPORT_PREFIX": prefix,
        **extra,
    }
    return Settings.from_env(env)


def migrate_api(source_url: str) -> None:
    migrate(source_url)  # every table, the API's keys included


def key_for(source_url: str, tenant: str | None, *, operator: bool = False, name: str = "test") -> str:
    with ApiKeyStore(source_url) as keys:
        token, _ = keys.create(tenant, name, operator=operator)
    return token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def complete_export(
    source_url: str,
    catalog: Any,
    s3_client: Any,
    bucket: str,
    prefix: str,
    row: dict[str, Any],
    signer: Any = None,
) -> Any:
    """What the Dagster job does for a request row, without Dagster: plan, export, finalize, and
    mark the row succeeded."""
    request = build_request(
        catalog,
        tenant_id=row["tenant_id"],
        resource=row["resource"],
        format=row["format"],
        compression=row.get("compression"),
        columns=row.get("columns"),
        filters=row.get("filters"),
        export_id=row["id"],
        max_rows_per_file=row.get("max_rows_per_file"),
    )
    plan = plan_export(source_url, catalog, request, prefix)
    clear_success_marker(s3_client, bucket, plan.location)
    outcome = run_export(plan, conninfo=source_url, catalog=catalog, s3_client=s3_client, bucket=bucket)
    done = finalize_export(s3_client, bucket, plan, outcome, signer=signer)
    with RequestStore(source_url) as store:
        store.mark_running(row["id"], "run-test", plan.rows_total)
        store.mark_succeeded(
            row["id"],
            rows=done.rows,
            bytes_written=done.bytes,
            manifest_key=done.manifest_key,
            download_url=done.files[0].url,
            expires_at=done.expires_at,
        )
    return done
