"""S3FaultProxy against the real SeaweedFS, and what botocore (pinned in requirements.lock) does per fault.

Note on retries: make_s3_client passes botocore's legacy `retries={"max_attempts": N}`, which counts
*retries*, so a client makes N + 1 attempts (6 -> 7; 0 -> exactly one). Tests below pin that down.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import botocore
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from export_pipelines.core.storage.s3 import MultipartSink, UploadedPart, make_s3_client
from export_pipelines_tests.support.s3_fault_proxy import (
    S3FaultProxy,
    all_of,
    complete_200_error,
    delay,
    error,
    method,
    op,
    query_has,
    reset_after,
    reset_before,
    s3_operation,
    slow_body,
)

PART = 5 * 1024 * 1024
DATA = os.urandom(PART) + b"the short last part"


def test_botocore_is_the_pinned_version() -> None:
    # The behaviours asserted here are botocore's; re-check them when requirements.lock moves.
    assert botocore.__version__ == "1.44.5"


@pytest.fixture
def proxy(stack_env: dict[str, str], bucket: str) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as p:
        yield p
    assert not _proxy_threads(), "the proxy left threads behind"


def _proxy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("s3-fault-proxy")]


def client_for(proxy: S3FaultProxy, stack_env: dict[str, str], **kwargs: Any) -> Any:
    return make_s3_client(
        endpoint_url=proxy.endpoint_url,
        aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        **kwargs,
    )


@pytest.fixture
def client(proxy: S3FaultProxy, stack_env: dict[str, str]) -> Any:
    return client_for(proxy, stack_env)


@pytest.fixture
def direct(s3_client: Any) -> Any:
    """A client that bypasses the proxy, to look at the server's state."""
    return s3_client


def upload_parts(sink: MultipartSink) -> list[UploadedPart]:
    sink.start()
    return [sink.upload_part(1, DATA[:PART]), sink.upload_part(2, DATA[PART:])]


def sink(client: Any, bucket: str, key: str) -> MultipartSink:
    return MultipartSink(client, bucket, key, content_type="application/octet-stream", metadata={"t": "1"})


def listed_part_numbers(direct: Any, bucket: str, key: str, upload_id: str) -> list[int]:
    return [p["PartNumber"] for p in direct.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]]


def read(direct: Any, bucket: str, key: str) -> bytes:
    return direct.get_object(Bucket=bucket, Key=key)["Body"].read()


def seen(proxy: S3FaultProxy, operation: str) -> list[tuple[str | None, bool, int | None, int | None]]:
    """(fault, forwarded, upstream status, status sent to the client) per request of `operation`."""
    proxy.wait_idle()  # the client can read a reply before the proxy thread has logged its end
    return [(e.fault, e.forwarded, e.upstream_status, e.status) for e in proxy.entries(operation)]


PASSED = (None, True, 200, 200)


# --- naming operations ---------------------------------------------------------------------------

OPERATIONS = [
    ("POST", "/b/k", {"uploads": [""]}, {}, "CreateMultipartUpload"),
    ("PUT", "/b/k", {"partNumber": ["3"], "uploadId": ["u"]}, {}, "UploadPart"),
    ("PUT", "/b/k", {"partNumber": ["3"], "uploadId": ["u"]}, {"x-amz-copy-source": "b/o"}, "UploadPartCopy"),
    ("POST", "/b/k", {"uploadId": ["u"]}, {}, "CompleteMultipartUpload"),
    ("DELETE", "/b/k", {"uploadId": ["u"]}, {}, "AbortMultipartUpload"),
    ("GET", "/b/k", {"uploadId": ["u"]}, {}, "ListParts"),
    ("PUT", "/b/k", {}, {}, "PutObject"),
    ("PUT", "/b/k", {}, {"x-amz-copy-source": "b/o"}, "CopyObject"),
    ("GET", "/b/a/deep/k", {}, {}, "GetObject"),
    ("HEAD", "/b/k", {}, {}, "HeadObject"),
    ("DELETE", "/b/k", {}, {}, "DeleteObject"),
    ("POST", "/b", {"delete": [""]}, {}, "DeleteObjects"),
    ("GET", "/b", {"list-type": ["2"], "prefix": ["p"]}, {}, "ListObjectsV2"),
    ("GET", "/b/", {"prefix": ["p"]}, {}, "ListObjects"),
    ("GET", "/b", {"uploads": [""]}, {}, "ListMultipartUploads"),
    ("HEAD", "/b", {}, {}, "HeadBucket"),
    ("PUT", "/b", {}, {}, "CreateBucket"),
    ("GET", "/", {}, {}, "ListBuckets"),
]


@pytest.mark.parametrize(("verb", "path", "query", "headers", "expected"), OPERATIONS)
def test_s3_operation_names(verb, path, query, headers, expected) -> None:
    assert s3_operation(verb, path, query, headers) == expected


# --- no faults -----------------------------------------------------------------------------------


def test_no_fault_round_trip(proxy, client, direct, bucket, prefix) -> None:
    key = f"{prefix}/multi.bin"
    s = sink(client, bucket, key)
    s.complete(upload_parts(s))
    client.put_object(Bucket=bucket, Key=f"{prefix}/small.txt", Body=b"small")

    assert read(client, bucket, key) == DATA
    assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(DATA)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
    assert [o["Key"] for o in listed["Contents"]] == [key, f"{prefix}/small.txt"]
    assert client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []) == []
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key}, {"Key": f"{prefix}/small.txt"}]})
    assert direct.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["KeyCount"] == 0

    # SigV4 signed the proxy's host:port; the server accepted it, so Host went through untouched.
    proxy.wait_idle()
    assert [(e.operation, e.part_number) for e in proxy.log] == [
        ("CreateMultipartUpload", None),
        ("UploadPart", 1),
        ("UploadPart", 2),
        ("CompleteMultipartUpload", None),
        ("PutObject", None),
        ("GetObject", None),
        ("HeadObject", None),
        ("ListObjectsV2", None),
        ("ListMultipartUploads", None),
        ("DeleteObjects", None),
    ]
    assert {(e.fault, e.forwarded, e.upstream_status, e.status, e.done) for e in proxy.log} == {
        (None, True, 200, 200, True)
    }


class StubUpstream:
    """A raw one-request-per-connection server: records each request's bytes, answers `response`."""

    def __init__(self, response: bytes, *, request_end: bytes, connections: int) -> None:
        self.response, self.request_end, self.connections = response, request_end, connections
        self.received: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self._thread = threading.Thread(target=self._serve)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _serve(self) -> None:
        for _ in range(self.connections):  # the proxy opens one upstream connection per request
            conn, _ = self._listener.accept()
            with conn:
                buf = b""
                while not buf.endswith(self.request_end):
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    buf += piece
                self.received.append(buf)
                conn.sendall(self.response)

    def __enter__(self) -> StubUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=15)
        self._listener.close()


def raw_connection(proxy: S3FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(proxy.endpoint_url.rsplit(":", 1)[1])), timeout=10)


def test_framing_is_forwarded_byte_for_byte() -> None:
    """Chunked request and response, odd Host, keep-alive: what goes in comes out, both ways."""
    request = (
        b"PUT /b/k HTTP/1.1\r\nHost: example.invalid:1234\r\nX-Mixed-Case: v\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n4\r\n abc\r\n0\r\nx-trailer: t\r\n\r\n"
    )
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    with (
        StubUpstream(response, request_end=b"x-trailer: t\r\n\r\n", connections=2) as upstream,
        S3FaultProxy(upstream.url) as proxy,
        raw_connection(proxy) as c,
    ):
        for _ in range(2):  # the same client connection twice: keep-alive works
            c.sendall(request)
            got = b""
            while not got.endswith(b"0\r\n\r\n") and (piece := c.recv(65536)):
                got += piece
            assert got == response
        proxy.wait_idle()
        assert [e.operation for e in proxy.log] == ["PutObject", "PutObject"]
    assert upstream.received == [request, request]


def test_resets_are_tcp_rst_and_only_reset_after_reaches_the_server() -> None:
    request = b"GET /b/k HTTP/1.1\r\nHost: h\r\n\r\n"
    with (
        StubUpstream(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", request_end=b"\r\n\r\n", connections=1
        ) as upstream,
        S3FaultProxy(upstream.url) as proxy,
    ):
        proxy.add_fault(method("GET"), reset_before())
        proxy.add_fault(method("GET"), reset_after())
        for _ in range(2):
            with raw_connection(proxy) as c:
                c.sendall(request)
                with pytest.raises(ConnectionResetError):  # RST, not an orderly FIN (recv -> b"")
                    c.recv(100)
        assert seen(proxy, "GetObject") == [
            ("reset_before", False, None, None),
            ("reset_after", True, 200, None),
        ]
    assert upstream.received == [request]


# --- error(status, code, message) ----------------------------------------------------------------


def test_503_slowdown_on_upload_part_is_retried(proxy, client, direct, bucket, prefix) -> None:
    rule = proxy.add_fault(
        op("UploadPart", part_number=2), error(503, "SlowDown", "Reduce your request rate.")
    )
    key = f"{prefix}/slowdown.bin"
    s = sink(client, bucket, key)
    s.complete(upload_parts(s))

    assert rule.fired == 1
    assert seen(proxy, "UploadPart") == [PASSED, ("error 503 SlowDown", False, None, 503), PASSED]
    assert read(direct, bucket, key) == DATA


def test_error_raised_once_retries_run_out(proxy, stack_env, bucket, prefix) -> None:
    client = client_for(proxy, stack_env, max_attempts=0)  # legacy max_attempts 0 = one attempt
    rule = proxy.add_fault("PutObject", error(500, "InternalError", "boom"), times=2)
    for _ in range(2):
        with pytest.raises(ClientError) as info:
            client.put_object(Bucket=bucket, Key=f"{prefix}/x", Body=b"x")
        assert (info.value.response["Error"]["Code"], info.value.response["Error"]["Message"]) == (
            "InternalError",
            "boom",
        )
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    client.put_object(Bucket=bucket, Key=f"{prefix}/x", Body=b"x")  # the rule has expired
    proxy.wait_idle()
    assert rule.fired == 2
    assert [e.status for e in proxy.entries("PutObject")] == [500, 500, 200]


def test_matchers_select_requests(proxy, stack_env, bucket, prefix) -> None:
    client = client_for(proxy, stack_env, max_attempts=0)
    # Earlier rules win; a rule that does not match leaves the request to the next one.
    proxy.add_fault(all_of(method("GET"), query_has("list-type")), error(503, "SlowDown", "s"), times=None)
    head_rule = proxy.add_fault(method("HEAD"), error(404, "NoSuchKey", "gone"), times=None)
    client.put_object(Bucket=bucket, Key=f"{prefix}/m", Body=b"m")
    assert client.get_object(Bucket=bucket, Key=f"{prefix}/m")["Body"].read() == b"m"
    with pytest.raises(ClientError) as info:
        client.head_object(Bucket=bucket, Key=f"{prefix}/m")
    assert info.value.response["Error"]["Code"] == "404"  # HEAD has no body: botocore sees the status only
    assert head_rule.fired == 1
    with pytest.raises(ClientError) as info:
        client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    assert info.value.response["Error"]["Code"] == "SlowDown"  # the proxy answered; the server never saw it
    assert [e.operation for e in proxy.log] == ["PutObject", "GetObject", "HeadObject", "ListObjectsV2"]


# --- reset_before / reset_after on UploadPart ----------------------------------------------------


def test_reset_before_upload_part_is_retried_server_saw_it_once(
    proxy, client, direct, bucket, prefix
) -> None:
    proxy.add_fault(op("UploadPart", part_number=1), reset_before())
    key = f"{prefix}/reset-before.bin"
    s = sink(client, bucket, key)
    parts = upload_parts(s)

    assert seen(proxy, "UploadPart") == [("reset_before", False, None, None), PASSED, PASSED]
    assert listed_part_numbers(direct, bucket, key, s.upload_id) == [1, 2]
    s.complete(parts)
    assert read(direct, bucket, key) == DATA


def test_reset_after_upload_part_is_retried_server_lists_the_part_twice(
    proxy, client, direct, bucket, prefix
) -> None:
    proxy.add_fault(op("UploadPart", part_number=1), reset_after())
    key = f"{prefix}/reset-after.bin"
    s = sink(client, bucket, key)
    parts = upload_parts(s)

    # The server stored part 1, the client never heard; botocore sent part 1 again.
    assert seen(proxy, "UploadPart") == [("reset_after", True, 200, None), PASSED, PASSED]
    # SeaweedFS keeps both copies of part 1 and lists both (AWS would list it once).
    assert listed_part_numbers(direct, bucket, key, s.upload_id) == [1, 1, 2]
    s.complete(parts)
    assert read(direct, bucket, key) == DATA


# --- the ambiguous CompleteMultipartUpload -------------------------------------------------------


def test_reset_after_complete_retry_succeeds_on_seaweedfs(proxy, client, direct, bucket, prefix) -> None:
    proxy.add_fault("CompleteMultipartUpload", reset_after())
    key = f"{prefix}/complete-reset.bin"
    s = sink(client, bucket, key)
    parts = upload_parts(s)
    upload_id = s.upload_id
    s.complete(parts)  # no exception

    # Attempt 1 completed the upload on the server; botocore saw a reset and retried. SeaweedFS 4.48
    # answers a repeated Complete of an upload whose object still exists with 200 and the same ETag.
    assert seen(proxy, "CompleteMultipartUpload") == [("reset_after", True, 200, None), PASSED]
    assert read(direct, bucket, key) == DATA
    with pytest.raises(ClientError, match="NoSuchUpload"):
        direct.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)


def test_reset_after_complete_then_no_such_upload_object_exists(
    proxy, client, direct, bucket, prefix
) -> None:
    """AWS documents NoSuchUpload for a Complete of a completed upload: the retry then raises."""
    proxy.add_fault("CompleteMultipartUpload", reset_after())
    proxy.add_fault(
        "CompleteMultipartUpload", error(404, "NoSuchUpload", "The specified upload does not exist.")
    )
    key = f"{prefix}/complete-nosuchupload.bin"
    s = sink(client, bucket, key)
    parts = upload_parts(s)
    with pytest.raises(ClientError) as info:
        s.complete(parts)

    assert info.value.response["Error"]["Code"] == "NoSuchUpload"
    assert seen(proxy, "CompleteMultipartUpload") == [
        ("reset_after", True, 200, None),
        ("error 404 NoSuchUpload", False, None, 404),
    ]
    # ...although the object is there, whole: the caller must check before calling it a failure.
    assert read(direct, bucket, key) == DATA


def test_reset_after_every_complete_raises_connection_closed(
    proxy, stack_env, direct, bucket, prefix
) -> None:
    client = client_for(proxy, stack_env, max_attempts=2)  # 2 retries = 3 attempts
    proxy.add_fault("CompleteMultipartUpload", reset_after(), times=None)
    key = f"{prefix}/complete-always-reset.bin"
    s = sink(client, bucket, key)
    parts = upload_parts(s)
    with pytest.raises(ConnectionClosedError):
        s.complete(parts)

    assert seen(proxy, "CompleteMultipartUpload") == [("reset_after", True, 200, None)] * 3
    assert read(direct, bucket, key) == DATA  # the exception lies: the object exists


# --- HTTP 200 with an <Error> body ---------------------------------------------------------------


def test_complete_200_error_not_applied_is_retried(proxy, client, direct, bucket, prefix) -> None:
    # botocore's before-parse handler turns a 200 whose body is <Error> into a 500, which the
    # standard retry mode retries like any InternalError.
    proxy.add_fault("CompleteMultipartUpload", complete_200_error(applied=False))
    key = f"{prefix}/complete-200.bin"
    s = sink(client, bucket, key)
    s.complete(upload_parts(s))

    assert seen(proxy, "CompleteMultipartUpload") == [
        ("complete_200_error applied=False", False, None, 200),
        PASSED,
    ]
    assert read(direct, bucket, key) == DATA


def test_complete_200_error_applied_is_retried_and_succeeds(proxy, client, direct, bucket, prefix) -> None:
    proxy.add_fault("CompleteMultipartUpload", complete_200_error(applied=True))
    key = f"{prefix}/complete-200-applied.bin"
    s = sink(client, bucket, key)
    s.complete(upload_parts(s))

    # The retry hits an already completed upload: SeaweedFS answers 200 again (see above).
    assert seen(proxy, "CompleteMultipartUpload") == [
        ("complete_200_error applied=True", True, 200, 200),
        PASSED,
    ]
    assert read(direct, bucket, key) == DATA


def test_complete_200_error_without_retries_raises_internal_error(
    proxy, stack_env, direct, bucket, prefix
) -> None:
    client = client_for(proxy, stack_env, max_attempts=0)
    proxy.add_fault("CompleteMultipartUpload", complete_200_error(applied=False))
    key = f"{prefix}/complete-200-raise.bin"
    s = sink(client, bucket, key)
    parts = upload_parts(s)
    upload_id = s.upload_id
    with pytest.raises(ClientError) as info:
        s.complete(parts)

    assert info.value.response["Error"]["Code"] == "InternalError"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500  # rewritten from 200
    assert seen(proxy, "CompleteMultipartUpload") == [("complete_200_error applied=False", False, None, 200)]
    assert listed_part_numbers(direct, bucket, key, upload_id) == [1, 2]  # still open: nothing applied
    s.abort()


# --- delay / slow_body ---------------------------------------------------------------------------


def test_delay_past_read_timeout_raises_without_retries(proxy, stack_env, bucket, prefix) -> None:
    client = client_for(proxy, stack_env, max_attempts=0, read_timeout=1)
    proxy.add_fault("PutObject", delay(2.5))
    with pytest.raises(ReadTimeoutError):
        client.put_object(Bucket=bucket, Key=f"{prefix}/late", Body=b"late")
    proxy.wait_idle()
    [entry] = proxy.entries("PutObject")
    assert (entry.fault, entry.forwarded, entry.upstream_status) == ("delay 2.5s", True, 200)


def test_delay_past_read_timeout_on_upload_part_is_retried(proxy, stack_env, direct, bucket, prefix) -> None:
    client = client_for(proxy, stack_env, read_timeout=1)
    proxy.add_fault(op("UploadPart", part_number=1), delay(2.5))
    key = f"{prefix}/delayed.bin"
    s = sink(client, bucket, key)
    parts = upload_parts(s)
    proxy.wait_idle()  # let the slow first attempt reach the server too

    first, retry, second = proxy.entries("UploadPart")
    assert (first.fault, first.forwarded, first.upstream_status) == ("delay 2.5s", True, 200)
    assert (retry.part_number, retry.fault, retry.status) == (1, None, 200)
    assert second.part_number == 2
    assert listed_part_numbers(direct, bucket, key, s.upload_id) == [1, 1, 2]  # the late copy landed
    s.complete(parts)
    assert read(direct, bucket, key) == DATA


def test_slow_body_throttles_the_response(proxy, client, direct, bucket, prefix) -> None:
    body = os.urandom(256 * 1024)
    direct.put_object(Bucket=bucket, Key=f"{prefix}/slow", Body=body)
    proxy.add_fault("GetObject", slow_body(512 * 1024))
    started = time.monotonic()
    assert client.get_object(Bucket=bucket, Key=f"{prefix}/slow")["Body"].read() == body
    assert time.monotonic() - started >= 0.45  # 256 KiB at 512 KiB/s
    assert seen(proxy, "GetObject") == [("slow_body 524288B/s", True, 200, 200)]


# --- lifecycle -----------------------------------------------------------------------------------


def test_close_interrupts_delays_and_joins_every_thread(stack_env, bucket, prefix) -> None:
    outcome: list[BaseException | None] = []
    with S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as proxy:
        client = client_for(proxy, stack_env, max_attempts=0)
        client.put_object(Bucket=bucket, Key=f"{prefix}/k", Body=b"k")
        proxy.add_fault("GetObject", delay(60))

        def slow_get() -> None:
            try:
                client.get_object(Bucket=bucket, Key=f"{prefix}/k")
                outcome.append(None)
            except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                outcome.append(exc)

        getter = threading.Thread(target=slow_get)
        getter.start()
        deadline = time.monotonic() + 10
        while not proxy.entries("GetObject") and time.monotonic() < deadline:
            time.sleep(0.05)
        # The GET holds the pooled connection, so this opens a second one, left idle (keep-alive).
        client.put_object(Bucket=bucket, Key=f"{prefix}/k2", Body=b"k")
        assert len(_proxy_threads()) == 3  # acceptor + the delayed connection + the idle one
        started = time.monotonic()
    assert time.monotonic() - started < 5
    getter.join(timeout=10)
    assert not _proxy_threads()
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionClosedError)
    [entry] = proxy.entries("GetObject")
    assert (entry.forwarded, entry.status, entry.done) == (False, None, True)
    assert entry.error is not None and "_Stopping" in entry.error
