"""The API holds against hostile and broken clients (docs/security.md), through the real server:
`export-pipelines serve` in a process of its own (uvicorn, httptools with a head limit), on the test database, with S3 behind
a fault-injecting proxy so a test can make it hang."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from export_pipelines.core.requests.api_keys import ApiKeyStore
from export_pipelines_tests.support.api_helpers import auth, complete_export, free_port, key_for, migrate_api
from export_pipelines_tests.support.s3_fault_proxy import S3FaultProxy, hang, method

MAX_BODY = 64 * 1024
MAX_HEADER = 16 * 1024
PER_KEY = 20  # per minute
PER_TENANT = 30  # per minute
SECRET = "test-secret-" + "x" * 40
SMALL = "t-002"


class Server:
    def __init__(self, url: str, log: Path, prefix: str, proxy: S3FaultProxy) -> None:
        self.url, self.log, self.prefix, self.proxy = url, log, prefix, proxy
        rest = url.split("://", 1)[1]
        self.host, port = rest.split(":")
        self.port = int(port)

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


@pytest.fixture(scope="module")
def server(stack_env, source_url, bucket, tmp_path_factory) -> Iterator[Server]:
    migrate_api(source_url)
    log = tmp_path_factory.mktemp("hostile") / "api.log"
    prefix = f"hostile-{uuid.uuid4().hex[:8]}"
    with S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as proxy:
        port = free_port()
        env = {
            **os.environ,
            **stack_env,
            "SOURCE_DATABASE_URL": source_url,
            "EXPORT_BUCKET": bucket,
            "EXPORT_PREFIX": prefix,
            "AWS_ENDPOINT_URL": proxy.endpoint_url,
            "EXPORT_API_MAX_BODY_BYTES": str(MAX_BODY),
            "EXPORT_API_MAX_HEADER_BYTES": str(MAX_HEADER),
            "EXPORT_API_RATE_LIMIT_PER_KEY": f"{PER_KEY}/minute",
            "EXPORT_API_RATE_LIMIT_PER_TENANT": f"{PER_TENANT}/minute",
            "EXPORT_API_TOKEN_SECRET": SECRET,
            "EXPORT_API_S3_TIMEOUT_SECONDS": "2",
        }
        with open(log, "w") as out:
            proc = subprocess.Popen(
                # No /metrics listener: its default port may be taken by an API the demo left running.
                [
                    sys.executable,
                    "-m",
                    "export_pipelines.cli",
                    "serve",
                    "--port",
                    str(port),
                    "--metrics-port",
                    "0",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the API did not start: {log.read_text()}")
                time.sleep(0.1)
            yield Server(url, log, prefix, proxy)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def fresh_tenant() -> str:
    return f"hostile-{uuid.uuid4().hex[:10]}"


def raw_exchange(
    server: Server, head: bytes, body_chunks: Iterator[bytes] | None = None, timeout: float = 20
) -> tuple[int, int]:
    """Send `head`, then body chunks until the server answers; (status, bytes sent)."""
    sock = socket.create_connection((server.host, server.port), timeout=timeout)
    sent = 0
    try:
        sock.sendall(head)
        sent += len(head)
        for chunk in body_chunks or ():
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered: stop sending
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = b""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in answer and time.monotonic() < deadline:
            try:
                got = sock.recv(4096)
            except ConnectionResetError:
                break
            if not got:
                break
            answer += got
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
        return status, sent
    finally:
        sock.close()


# --- header and body limits, authentication first ----------------------------------------------


def test_an_oversized_header_answers_431_while_other_clients_are_served(server, client):
    """Fails on the old server (httptools, no header limit): no 431, and other clients stalled."""
    big = 4 * 1024 * 1024

    def attack() -> tuple[int, int]:
        head = b"GET /v1/exports HTTP/1.1\r\nHost: x\r\nX-Big: "

        def chunks() -> Iterator[bytes]:
            for _ in range(big // 65536):
                yield b"a" * 65536

        return raw_exchange(server, head, chunks())

    with ThreadPoolExecutor(2) as pool:
        attacks = [pool.submit(attack) for _ in range(2)]
        worst = 0.0
        while not all(a.done() for a in attacks):
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.05)
        results = [a.result() for a in attacks]
    assert [status for status, _ in results] == [431, 431], results
    # Refused near the limit, not after reading all 4 MB (the socket buffers hold a little).
    assert all(sent < big for _, sent in results), results
    assert worst < 5.0, f"/healthz waited {worst:.1f} s behind the oversized headers"


def test_heads_up_to_the_limit_are_served_on_one_connection_and_the_next_one_over_it_is_refused(server):
    """The head limit counts each request of a keep-alive connection on its own: several requests
    sent in one write, each head just under the limit, are all answered; the next head on the same
    connection, over the limit, is answered 431 and the connection closed."""

    def head(size: int) -> bytes:
        start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
        return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"

    under, over = head(MAX_HEADER - 512), head(MAX_HEADER + 4096)
    assert len(under) < MAX_HEADER < len(over)
    with socket.create_connection((server.host, server.port), timeout=20) as sock:
        sock.sendall(under * 3)  # pipelined: three requests in one write
        answers = b""
        while answers.count(b"HTTP/1.1 ") < 3 or not answers.endswith(b"}"):
            got = sock.recv(65536)
            assert got, answers
            answers += got
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"200", b"200", b"200"]
        sock.sendall(over)
        refusal = b""
        while got := sock.recv(65536):
            refusal += got
    assert refusal.startswith(b"HTTP/1.1 431 "), refusal[:200]


def test_a_body_over_the_limit_answers_413_before_it_is_read(server, source_url):
    """Fails on the old server: it waited for (and buffered) the whole declared body."""
    token = key_for(source_url, fresh_tenant())
    # Declared too large: answered from Content-Length, nothing read.
    head = (
        f"POST /v1/exports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n"
    ).encode()
    assert raw_exchange(server, head, timeout=10)[0] == 413
    # Chunked, no length: counted while it streams, answered once past the limit.
    head = (
        f"POST /v1/exports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:
        for _ in range(400):  # 400 x 16 KiB = 6.4 MB offered
            yield b"4000\r\n" + b" " * 0x4000 + b"\r\n"
            time.sleep(0.002)

    status, sent = raw_exchange(server, head, chunks())
    assert status == 413
    assert sent < 4 * 1024 * 1024, f"{sent} bytes were taken before the 413"


def test_the_key_is_checked_before_the_body_is_read_or_validated(server, client, source_url):
    """Fails on the old server: a bad key's body was read whole (and PUT validated it first: 422)."""
    # A declared body that never comes: the old server waited for it; now 401 comes first.
    head = (
        b"POST /v1/exports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer exp_not-a-key\r\n"
        b"Content-Type: application/json\r\nContent-Length: 50000\r\n\r\n"
    )
    assert raw_exchange(server, head, timeout=10)[0] == 401
    bad = client.put(
        "/v1/notify-settings",
        headers=auth("exp_not-a-key"),
        json={"webhook_url": "http://169.254.169.254/x", "nonsense": 1},
    )
    assert bad.status_code == 401, bad.text
    assert "allowlist" not in bad.text and "webhook" not in bad.text
    # With a good key the same body is answered 422 naming the field.
    token = key_for(source_url, fresh_tenant())
    invalid = client.put("/v1/notify-settings", headers=auth(token), json={"nonsense": 1})
    assert invalid.status_code == 422 and invalid.json()["error"]["field"] == "nonsense", invalid.text


MUTATING_FEED_AND_DESTINATION_ROUTES = [
    ("POST", "/v1/feeds"),
    ("PATCH", "/v1/feeds/00000000-0000-0000-0000-000000000000"),
    ("DELETE", "/v1/feeds/00000000-0000-0000-0000-000000000000"),
    ("POST", "/v1/feeds/00000000-0000-0000-0000-000000000000/run"),
    ("POST", "/v1/feeds/00000000-0000-0000-0000-000000000000/full-refresh"),
    ("POST", "/v1/destinations"),
    ("DELETE", "/v1/destinations/00000000-0000-0000-0000-000000000000"),
    ("POST", "/v1/destinations/00000000-0000-0000-0000-000000000000/test"),
]


@pytest.mark.parametrize(("method", "path"), MUTATING_FEED_AND_DESTINATION_ROUTES)
def test_feed_and_destination_routes_check_the_key_first_and_are_rate_limited(
    server, client, source_url, method, path
):
    """Fails on the old server: these routes read a bad key's whole body before its 401, and had no
    rate limit (a destination test opens a connection to a host the tenant names, each call)."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer exp_not-a-key\r\n"
        "Content-Type: application/json\r\nContent-Length: 50000\r\n\r\n"
    ).encode()
    assert raw_exchange(server, head, timeout=10)[0] == 401
    token = key_for(source_url, fresh_tenant())
    statuses = [
        client.request(method, path, headers=auth(token), json={}).status_code for _ in range(PER_KEY + 1)
    ]
    assert 429 not in statuses[:PER_KEY] and statuses[-1] == 429, statuses


# --- rate limits --------------------------------------------------------------------------------


def test_create_and_cancel_churn_is_rate_limited_per_key_and_per_tenant(server, client, source_url):
    """Fails on the old server: no limit at all (726 create+cancel pairs in 15 s)."""
    tenant = fresh_tenant()
    first, second = key_for(source_url, tenant), key_for(source_url, tenant)
    statuses: list[int] = []
    refused: httpx.Response | None = None
    for _ in range(PER_KEY):
        created = client.post("/v1/exports", headers=auth(first), json={"resource": "orders"})
        statuses.append(created.status_code)
        if created.status_code == 429:
            refused = created
            break
        canceled = client.post(f"/v1/exports/{created.json()['id']}/cancel", headers=auth(first))
        statuses.append(canceled.status_code)
        if canceled.status_code == 429:
            refused = canceled
            break
    assert refused is not None, statuses
    assert statuses.count(202) == PER_KEY, statuses  # creates and cancels count alike
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # The tenant's other key has the rest of the tenant's budget, then the tenant limit answers.
    more = [
        client.post(
            "/v1/exports/00000000-0000-0000-0000-000000000000/cancel", headers=auth(second)
        ).status_code
        for _ in range(PER_TENANT - PER_KEY + 1)
    ]
    assert more[:-1] == [404] * (PER_TENANT - PER_KEY) and more[-1] == 429, more
    # Another tenant is not affected.
    other = key_for(source_url, fresh_tenant())
    assert client.post("/v1/exports", headers=auth(other), json={"resource": "orders"}).status_code == 202


def test_a_key_past_its_limit_is_refused_without_a_database_call(server, client, source_url):
    """Fails on the old server, which looked the key up before every limit: a client hammering past
    its limit cost a database round trip per request. Here the key table is locked while the
    over-limit key asks again: it is answered 429 at once, where a key lookup would wait."""
    key, under_limit = key_for(source_url, fresh_tenant()), key_for(source_url, fresh_tenant())
    missing = "/v1/exports/00000000-0000-0000-0000-000000000000/cancel"
    statuses = [client.post(missing, headers=auth(key)).status_code for _ in range(PER_KEY + 1)]
    assert statuses == [404] * PER_KEY + [429], statuses
    with psycopg.connect(source_url) as locker:
        locker.execute("LOCK TABLE export_api_keys IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        refused = client.post(missing, headers=auth(key))
        took = time.monotonic() - started
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert took < 1.0, f"the refusal waited {took:.2f} s for the locked key table"
        # A key under its limit does need the table: the lock is what the refusal did not wait for.
        started = time.monotonic()
        try:
            waited = client.post(missing, headers=auth(under_limit), timeout=2).status_code
        except httpx.TimeoutException:
            waited = 0
        assert time.monotonic() - started >= 1.0, waited


def test_a_key_past_its_limit_is_refused_while_every_worker_thread_waits(server, client, source_url):
    """Fails when the over-limit check runs in the routes' worker threads: with the key table locked,
    60 status reads of another tenant take every thread of the server (40) and wait; the over-limit
    key's next request is still answered 429 at once, before routing, from the event loop."""
    key, reader = key_for(source_url, fresh_tenant()), key_for(source_url, fresh_tenant())
    missing = "/v1/exports/00000000-0000-0000-0000-000000000000"
    statuses = [client.post(missing + "/cancel", headers=auth(key)).status_code for _ in range(PER_KEY + 1)]
    assert statuses == [404] * PER_KEY + [429], statuses

    def read(_: int) -> int:
        try:
            return httpx.get(server.url + missing, headers=auth(reader), timeout=30).status_code
        except httpx.HTTPError:
            return -1

    with psycopg.connect(source_url) as locker, ThreadPoolExecutor(max_workers=60) as readers:
        locker.execute("LOCK TABLE export_api_keys IN ACCESS EXCLUSIVE MODE")
        waiting = [readers.submit(read, n) for n in range(60)]
        time.sleep(2)  # the reads are in the server's threads, waiting on the lock
        assert not any(w.done() for w in waiting), "the reads did not wait: the test proves nothing"
        started = time.monotonic()
        refused = client.post(missing + "/cancel", headers=auth(key), timeout=10)
        took = time.monotonic() - started
        locker.rollback()  # the reads go on
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert took < 1.0, f"the refusal waited {took:.2f} s for a worker thread"
        assert {w.result() for w in waiting} <= {404, 503}


# --- event-stream tokens ------------------------------------------------------------------------


def _old_style_token(key_hash: str, claims: list[Any]) -> str:
    payload = (
        base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode().rstrip("=")
    )
    signing = hashlib.sha256(b"export-pipelines event-stream token\n" + key_hash.encode()).digest()
    return f"est_{payload}.{hmac.new(signing, payload.encode(), hashlib.sha256).hexdigest()}"


def _signed(claims: list[Any]) -> str:
    payload = (
        base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode().rstrip("=")
    )
    secret = hashlib.sha256(b"export-pipelines event-stream token\n" + SECRET.encode()).digest()
    return f"est_{payload}.{hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()}"


def test_stream_tokens_cannot_be_forged_from_the_database_nor_outlive_the_server_bound(
    server, client, source_url
):
    """Fails on the old server: a 100-year token made offline from the stored key hash opened the stream."""
    tenant = fresh_tenant()
    token = key_for(source_url, tenant)
    export_id = client.post("/v1/exports", headers=auth(token), json={"resource": "orders"}).json()["id"]
    with psycopg.connect(source_url, row_factory=dict_row) as conn:
        key = conn.execute(
            "SELECT id, key_hash FROM export_api_keys WHERE key_prefix = %s", [token[:12]]
        ).fetchone()
    century = int(time.time()) + 100 * 365 * 86400
    forged = _old_style_token(key["key_hash"], [key["id"], tenant, export_id, century])
    answer = client.get(f"/v1/exports/{export_id}/events", params={"access_token": forged})
    assert answer.status_code == 401, answer.text
    # Even signed with the server's secret, an expiry beyond the server's bound is refused.
    long_lived = _signed([key["id"], tenant, export_id, century])
    answer = client.get(f"/v1/exports/{export_id}/events", params={"access_token": long_lived})
    assert answer.status_code == 401 and "expiry" in answer.json()["error"]["message"], answer.text
    # A token the API minted works, and says when it ends (minutes away).
    minted = client.post(f"/v1/exports/{export_id}/events/token", headers=auth(token)).json()
    with client.stream("GET", minted["url"]) as stream:
        assert stream.status_code == 200


def test_revoking_a_key_ends_its_open_streams(server, client, source_url):
    """Fails on the old server: the stream kept running (and its final event carried fresh links)."""
    token = key_for(source_url, fresh_tenant())
    export_id = client.post("/v1/exports", headers=auth(token), json={"resource": "orders"}).json()["id"]
    minted = client.post(f"/v1/exports/{export_id}/events/token", headers=auth(token)).json()
    ended = threading.Event()
    events: list[str] = []

    def read(url: str, headers: dict[str, str]) -> None:
        with (
            httpx.Client(base_url=server.url, timeout=httpx.Timeout(60, read=60)) as c,
            c.stream("GET", url, headers=headers) as stream,
        ):
            for line in stream.iter_lines():
                events.append(line)
        ended.set()

    readers = [
        threading.Thread(target=read, args=(f"/v1/exports/{export_id}/events", auth(token)), daemon=True),
        threading.Thread(target=read, args=(minted["url"], {}), daemon=True),
    ]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 20
    while sum(line.startswith("event: progress") for line in events) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(line.startswith("event: progress") for line in events) == 2, events
    with ApiKeyStore(source_url) as keys:
        assert keys.revoke(token[:12]) == 1
    for reader in readers:
        reader.join(timeout=20)
        assert not reader.is_alive(), "the stream of a revoked key is still open"


# --- the request log ----------------------------------------------------------------------------


def test_the_request_log_is_json_and_control_characters_cannot_forge_lines(server, client, source_url):
    """Fails on the old server: an encoded CR/LF in the path wrote a forged line into the log."""
    tenant = fresh_tenant()
    token = key_for(source_url, tenant)
    marker = uuid.uuid4().hex
    client.get(f"/v1/exports/x%0d%0a{marker}%20OPERATOR%20key%20forged%0a", headers=auth(token))
    client.get("/v1/exports", headers=auth(token))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in server.log_lines() if line.startswith("{")]
        mine = [json.loads(line) for line in lines if tenant in line or marker in line]
        if len(mine) >= 2:
            break
        time.sleep(0.1)
    assert not any(line.startswith(marker) for line in server.log_lines())
    assert [m["path"].count("\n") for m in mine if marker in m["path"]] == [2]  # escaped, inside one line
    listing = next(m for m in mine if m["path"] == "/v1/exports")
    assert listing["tenant"] == tenant and listing["operator"] is False and isinstance(listing["key_id"], int)


# --- slow dependencies, dead connections, paged files -------------------------------------------


@pytest.fixture
def finished(server, client, source_url, catalog, s3_client, bucket) -> tuple[str, str, Any]:
    """A real export of a small tenant in many files, its row succeeded."""
    token = key_for(source_url, SMALL)
    with psycopg.connect(source_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "DELETE FROM export_requests WHERE tenant_id = %s AND status IN ('pending', 'queued')", [SMALL]
        )
    created = client.post(
        "/v1/exports",
        headers=auth(token),
        json={"resource": "orders", "format": "csv", "max_rows_per_file": 100},
    )
    assert created.status_code == 202, created.text
    with psycopg.connect(source_url, row_factory=dict_row) as conn:
        row = conn.execute("SELECT * FROM export_requests WHERE id = %s", [created.json()["id"]]).fetchone()
    row = {**row, "id": str(row["id"])}
    done = complete_export(source_url, catalog, s3_client, bucket, server.prefix, row)
    assert len(done.files) >= 3
    return row["id"], token, done


def test_files_come_a_page_at_a_time(client, finished):
    """Fails on the old server: every file was signed on every call, and `limit` was ignored."""
    export_id, token, done = finished
    numbers: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get(f"/v1/exports/{export_id}/files", params=params, headers=auth(token))
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["data"]) <= 2
        numbers += [f["number"] for f in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert numbers == list(range(1, len(done.files) + 1))
    assert pages == (len(done.files) + 1) // 2


def test_a_hanging_s3_slows_the_file_routes_only(server, client, source_url, finished):
    """Fails on the old server: hung /files calls took every worker thread; /healthz and other
    tenants' status reads timed out, and /readyz did not answer."""
    export_id, token, _ = finished
    other = key_for(source_url, fresh_tenant())
    other_id = client.post("/v1/exports", headers=auth(other), json={"resource": "orders"}).json()["id"]
    rule = server.proxy.add_fault(method("GET", "HEAD"), hang(), times=None)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as slow, ThreadPoolExecutor(45) as pool:
            calls = [
                pool.submit(slow.get, f"/v1/exports/{export_id}/files", headers=auth(token))
                for _ in range(45)
            ]
            time.sleep(1.0)  # the calls are in: every one of them waits on S3 or on a slot
            for _ in range(5):
                started = time.monotonic()
                assert client.get("/healthz", timeout=5).status_code == 200
                status = client.get(f"/v1/exports/{other_id}", headers=auth(other), timeout=5)
                assert status.status_code == 200, status.text
                assert time.monotonic() - started < 5
            ready = client.get("/readyz", timeout=30)
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"] == "ok"
            assert ready.json()["checks"]["s3"].startswith("unavailable")
            codes = sorted({c.result().status_code for c in calls})
        assert codes == [503], codes
    finally:
        server.proxy.clear_faults()
        rule.action.release()  # type: ignore[attr-defined]
    assert client.get(f"/v1/exports/{export_id}/files", headers=auth(token)).status_code == 200


def test_dead_pooled_connections_are_replaced_not_handed_out(server, client, source_url):
    """Fails on the old server: after its backends were killed, most of the next reads answered 503."""
    token = key_for(source_url, fresh_tenant())
    export_id = client.post("/v1/exports", headers=auth(token), json={"resource": "orders"}).json()["id"]
    with ThreadPoolExecutor(10) as pool:  # several connections in the pool
        list(pool.map(lambda _: client.get(f"/v1/exports/{export_id}", headers=auth(token)), range(30)))
    with psycopg.connect(source_url, autocommit=True) as conn:
        killed = [
            r[0]
            for r in conn.execute(
                "WITH api AS MATERIALIZED (SELECT pid FROM pg_stat_activity WHERE application_name = "
                "'export-api' AND datname = current_database()) SELECT pid FROM api WHERE pg_terminate_backend(pid)"
            )
        ]
        assert len(killed) >= 2
        deadline = time.monotonic() + 20  # the backends are gone (termination is asynchronous)
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [killed]).fetchone()[
            0
        ]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    codes = [client.get(f"/v1/exports/{export_id}", headers=auth(token)).status_code for _ in range(30)]
    assert codes == [200] * 30, codes


# --- documentation pages ------------------------------------------------------------------------


def test_docs_and_redoc_load_their_scripts_from_the_service_not_a_cdn(client):
    """Fails on the old server: /docs and /redoc loaded unpinned scripts from a public CDN."""
    import re

    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html.text)
        assert sources, html.text
        assert all(s.startswith("/") and not s.startswith("//") for s in sources), sources
        for source in sources:
            if source != "/openapi.json":
                asset = client.get(source)
                assert asset.status_code == 200 and len(asset.content) > 1000, source
        assert "cdn" not in html.text.lower() and "googleapis" not in html.text
