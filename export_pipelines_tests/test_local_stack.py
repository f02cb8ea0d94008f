"""The local stack really serves PostgreSQL and an S3 that checks signatures (DESIGN 7)."""

from __future__ import annotations

import secrets
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest

from export_pipelines import local_stack


@pytest.fixture(scope="module")
def stack() -> dict[str, str]:
    return local_stack.start()


def _http_status(url: str, method: str = "GET", data: bytes | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("url_var", ["SOURCE_DATABASE_URL", "DAGSTER_POSTGRES_URL"])
def test_sql_round_trip(stack: dict[str, str], url_var: str) -> None:
    with psycopg.connect(stack[url_var], connect_timeout=10) as conn:
        conn.execute("CREATE TEMP TABLE probe (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO probe VALUES (%s, %s)", (1, "héllo"))
        row = conn.execute("SELECT note, current_database(), current_setting('port') FROM probe").fetchone()
    assert row is not None
    note, database, port = row
    assert note == "héllo"
    assert database == stack[url_var].rsplit("/", 1)[1]
    assert port == str(local_stack.Settings.from_env().pg_port)


def test_s3_round_trip_and_auth(stack: dict[str, str]) -> None:
    client: Any = local_stack.s3_client()
    bucket = stack["EXPORT_BUCKET"]
    key = f"{stack['EXPORT_PREFIX']}/_tests/local_stack/{secrets.token_hex(8)}.bin"
    body = secrets.token_bytes(100_000)

    client.put_object(Bucket=bucket, Key=key, Body=body)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body

    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == body

    # A presigned URL whose signature was altered must be refused...
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert _http_status(url.replace(signature, flipped)) == 403
    # ...and so must one that points at another object with the original signature.
    assert _http_status(url.replace(key, key + "x")) == 403
    # Anonymous requests never get through, for reading or writing.
    endpoint = stack["AWS_ENDPOINT_URL"]
    assert _http_status(f"{endpoint}/{bucket}/{key}") == 403
    assert _http_status(f"{endpoint}/{bucket}/{key}.anon", method="PUT", data=b"x") == 403

    client.delete_object(Bucket=bucket, Key=key)


def test_start_twice_is_a_no_op(stack: dict[str, str]) -> None:
    before = {service.name: service.pid for service in local_stack.status()}
    assert all(before.values()), before
    began = time.monotonic()
    assert local_stack.start() == stack
    assert time.monotonic() - began < 15
    after = {service.name: service.pid for service in local_stack.status()}
    assert after == before
