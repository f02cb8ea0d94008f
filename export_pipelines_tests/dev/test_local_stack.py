"""The local stack really serves PostgreSQL and an S3 that checks signatures (docs/development.md)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from export_pipelines_dev.local_stack import api as local_stack
from export_pipelines_dev.local_stack import paths, ports, seaweed


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
    assert port == str(paths.Settings.from_env().pg_port)


def test_s3_round_trip_and_auth(stack: dict[str, str]) -> None:
    client: Any = seaweed.s3_client()
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


# --------------------------------------------------------------------------------------------
# Port conflicts: another checkout's stack (or anything else) holds the default ports
# --------------------------------------------------------------------------------------------


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def _scratch_dir() -> Path:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, and as root `nobody` must reach it.
    root = Path(tempfile.mkdtemp(prefix="export-stack-test-"))
    root.chmod(0o755)
    return root


def test_taken_ports_move_and_are_saved(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No servers here: hold ports with plain listening sockets and let the chooser move away."""
    monkeypatch.delenv("EXPORT_PG_PORT", raising=False)
    monkeypatch.delenv("EXPORT_S3_PORT", raising=False)
    root = _scratch_dir()
    try:
        p = paths.Paths(root)
        pg_port = ports.free_pg_port(paths.DEFAULT_PG_PORT, None, set())
        s3_port = ports.free_s3_base(paths.DEFAULT_S3_PORT, set(), {pg_port or 0})
        assert pg_port and s3_port
        p.ports.write_text(json.dumps({"pg_port": pg_port, "s3_port": s3_port}))
        admin_port = paths.weed_block(s3_port)["admin.port"]  # the odd one, base - 9992
        assert admin_port == s3_port - 9992
        held = [_listen(pg_port), _listen(admin_port)]
        try:
            wanted = paths.Settings.from_env(p)
            assert (wanted.pg_port, wanted.s3_port) == (pg_port, s3_port)
            chosen = ports.choose_ports(p, wanted)

            assert chosen.pg_port > pg_port
            assert chosen.s3_port > s3_port
            assert (chosen.s3_port - s3_port) % 13 == 0  # whole blocks, the same layout
            block = set(paths.weed_block(chosen.s3_port).values())
            assert admin_port not in block and pg_port not in block and chosen.pg_port not in block
            assert json.loads(p.ports.read_text()) == {"pg_port": chosen.pg_port, "s3_port": chosen.s3_port}
            note = capsys.readouterr().err
            assert note.count("\n") == 1 and "moved postgres" in note and str(p.ports) in note
            # env/status/stop read the saved ports back.
            again = paths.Settings.from_env(p)
            assert (again.pg_port, again.s3_port) == (chosen.pg_port, chosen.s3_port)

            # Explicit ports are never moved: a conflict stays an error.
            monkeypatch.setenv("EXPORT_PG_PORT", str(pg_port))
            with pytest.raises(paths.StackError, match=r"already taken.*EXPORT_PG_PORT"):
                ports.choose_ports(p, paths.Settings.from_env(p))
            monkeypatch.delenv("EXPORT_PG_PORT")
            monkeypatch.setenv("EXPORT_S3_PORT", str(s3_port))
            with pytest.raises(paths.StackError, match=f"{admin_port}.*EXPORT_S3_PORT"):
                ports.choose_ports(p, paths.Settings.from_env(p))
            assert json.loads(p.ports.read_text())["s3_port"] == chosen.s3_port
        finally:
            for sock in held:
                sock.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export_pipelines_dev", "stack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_second_stack_beside_a_running_one(stack: dict[str, str]) -> None:
    """A stack in another state dir (a fresh clone, say) while this one holds its ports."""
    first = paths.Settings.from_env()
    first_block = set(paths.weed_block(first.s3_port).values())
    first_pids = {service.name: service.pid for service in local_stack.status()}
    root = _scratch_dir()
    state = root / "stack"
    env = {k: v for k, v in os.environ.items() if k not in ("EXPORT_PG_PORT", "EXPORT_S3_PORT")}
    env["EXPORT_STACK_DIR"] = str(state)
    if (first.pg_port, first.s3_port) != (paths.DEFAULT_PG_PORT, paths.DEFAULT_S3_PORT):
        # This stack was moved itself; make the second one want the ports this one holds.
        state.mkdir()
        (state / "ports.json").write_text(json.dumps({"pg_port": first.pg_port, "s3_port": first.s3_port}))
    try:
        started = _cli(env, "start")
        assert started.returncode == 0, started.stderr
        assert "ports taken by other programs; moved postgres" in started.stderr

        printed = _cli(env, "env")
        assert printed.returncode == 0, printed.stderr
        assert all(line.startswith("export ") for line in printed.stdout.splitlines()), printed.stdout
        evaluated = subprocess.run(
            [
                "bash",
                "-c",
                'eval "$1" && printf "%s\\n" "$SOURCE_DATABASE_URL" "$AWS_ENDPOINT_URL"',
                "-",
                printed.stdout,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        source_url, endpoint = evaluated.stdout.splitlines()
        second = {
            line.split("=", 1)[0][len("export ") :]: shlex.split(line.split("=", 1)[1])[0]
            for line in printed.stdout.splitlines()
        }
        assert (second["SOURCE_DATABASE_URL"], second["AWS_ENDPOINT_URL"]) == (source_url, endpoint)

        pg_port = int(source_url.rsplit(":", 1)[1].split("/", 1)[0])
        s3_port = int(endpoint.rsplit(":", 1)[1])
        second_block = set(paths.weed_block(s3_port).values())
        assert pg_port != first.pg_port
        assert not second_block & first_block
        assert pg_port not in first_block | second_block
        assert json.loads((state / "ports.json").read_text()) == {"pg_port": pg_port, "s3_port": s3_port}

        status = _cli(env, "status").stdout
        assert f"127.0.0.1:{pg_port} " in status and f"{endpoint} " in status
        assert status.count("running") == 2, status

        with psycopg.connect(source_url, connect_timeout=10, autocommit=True) as conn:
            conn.execute("CREATE TABLE probe (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO probe VALUES (1, 'second')")
            row = conn.execute(
                "SELECT note, current_setting('port'), current_setting('data_directory') FROM probe"
            ).fetchone()
        assert row == ("second", str(pg_port), str(state / "pg" / "data"))

        import boto3
        from botocore.exceptions import ClientError

        client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=second["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=second["AWS_SECRET_ACCESS_KEY"],
            region_name=second["AWS_REGION"],
        )
        bucket, key, body = (
            second["EXPORT_BUCKET"],
            f"_tests/second-stack/{secrets.token_hex(8)}",
            secrets.token_bytes(5000),
        )
        client.put_object(Bucket=bucket, Key=key, Body=body)
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        with pytest.raises(ClientError):  # a separate server: the first one never saw it
            seaweed.s3_client().head_object(Bucket=bucket, Key=key)

        # Starting again keeps the saved ports and the running servers, silently.
        again = _cli(env, "start")
        assert again.returncode == 0, again.stderr
        assert "moved" not in again.stderr
        assert "postgres already running, s3 already running" in again.stdout
        assert _cli(env, "env").stdout == printed.stdout
    finally:
        destroyed = _cli(env, "destroy")
        shutil.rmtree(root, ignore_errors=True)
    assert destroyed.returncode == 0, destroyed.stderr
    assert not state.exists()
    # The first stack was never touched.
    assert {service.name: service.pid for service in local_stack.status()} == first_pids
    assert local_stack.start() == stack
