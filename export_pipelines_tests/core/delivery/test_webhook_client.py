"""The webhook client refuses internal targets and cannot be steered or held (docs/security.md).

No database, no S3, no internet: receivers are local HTTP servers on 127.0.0.1 / ::1 run in threads, and
"public" names reach them only through an injected resolver (with allow_private) or an injected connector
that records where the client connects.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from export_pipelines.core.delivery.drain import Channels, send_webhook
from export_pipelines.core.delivery.webhook_client import (
    ERR_CERTIFICATE,
    ERR_CONNECT,
    ERR_REDIRECT,
    ERR_TIMEOUT,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryResult,
    post_json,
    signed_headers,
    verify,
)
from export_pipelines.core.delivery.webhook_target import (
    ERR_NOT_ALLOWLISTED,
    ERR_REFUSED,
    Target,
    address_allowed,
    check_target,
)
from export_pipelines.core.errors import InvalidWebhook, Rejected

PUBLIC = "8.8.8.8"  # any global address: tests never connect to it for real
NO_SLEEP: Any = lambda _s: None  # noqa: E731


# ------------------------------------------------------------------------------------------- receivers


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server: Any = self.server
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status = server.script.pop(0) if server.script else 200
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", server.location)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, script: list[int] | None = None, location: str = "") -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.script = list(script or [])
        self.location = location


@contextmanager
def receiver(
    host: str = "127.0.0.1", script: list[int] | None = None, location: str = ""
) -> Iterator[_Server]:
    server = _Server(host, script, location)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def raw_receiver(behaviour: str) -> Iterator[int]:
    """'hang': accept, never answer. 'drip': accept, send one byte of a status line every 0.1 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)
            if behaviour == "drip":
                threading.Thread(target=drip, args=(conn,), daemon=True).start()

    def drip(conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK"[:-1] * 100:
            if stop.wait(0.1):
                return
            try:
                conn.send(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(1)
        for conn in held:
            conn.close()
        listener.close()


def resolver_for(mapping: dict[str, list[str]], calls: list[str] | None = None):
    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return mapping[host]

    return resolve


def closed_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- checking

SSRF_URLS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:5432/",
    "https://127.0.0.1:8443/hook",
    "http://127.1/",
    "http://localhost/",
    "http://localhost./",
    "http://LOCALHOST:8080/",
    "http://api.localhost/",
    "http://[::1]/",
    "http://[::1]:8080/x",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.0.1/",
    "http://[fe80::1]/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://172.31.255.255/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fec0::1]/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://[ff02::1]/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://198.18.0.1/",
    "http://192.0.2.1/",
    "http://198.51.100.7/",
    "http://203.0.113.9/",
    "http://192.0.0.8/",
    "http://[2001:db8::1]/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",
    "http://017700000001/",
    "http://127.0.0.1./",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:8.8.8.8]/",  # mapped at all: refused
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
    "http://[2002:a00:1::1]/",  # 6to4 of 10.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo, client 127.0.0.1
]


@pytest.mark.parametrize("url", SSRF_URLS)
def test_internal_targets_refused_by_default(url):
    with pytest.raises(InvalidWebhook) as info:
        check_target(url)  # the system resolver, as in production
    exc = info.value
    assert isinstance(exc, Rejected) and exc.field == "webhook_url" and exc.code == "invalid_request"
    message = str(exc)
    assert message.startswith("webhook_url: ")
    assert "127.0.0.1" not in message and "::1" not in message and "169.254" not in message
    assert "localhost" not in message.lower() and ":80" not in message and "5432" not in message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://example.com:70/_",
        "javascript:alert(1)",
        "http:///path",
        "http://",
        "//example.com/x",
        "http://user:pw@example.com/",
        "http://example.com@127.0.0.1/",
        "http://%31%32%37.0.0.1/",
        "http://exa mple.com/",
        "http://example.com:0/",
        "http://example.com:99999/",
        "http://example.com/\r\nX-Injected: 1",
        "http://[fe80::1%25eth0]/",
        "http://" + "a" * 2100 + ".com/",
        "",
    ],
)
def test_malformed_urls_refused(url):
    with pytest.raises(InvalidWebhook) as info:
        check_target(url, allow_private=True, resolver=resolver_for({"example.com": [PUBLIC]}))
    assert info.value.field == "webhook_url"


def test_a_name_resolving_to_a_private_address_is_refused():
    resolve = resolver_for(
        {"hooks.tenant.example": ["10.1.2.3"], "mixed.tenant.example": [PUBLIC, "10.1.2.3"]}
    )
    for host in ("hooks.tenant.example", "mixed.tenant.example", "nxdomain.tenant.example"):
        with pytest.raises(InvalidWebhook) as info:
            check_target(f"https://{host}/hook", resolver=resolve)
        # The same text whether the name is internal or does not resolve: no oracle for internal DNS.
        assert str(info.value) == (
            "webhook_url: refused: target address not allowed "
            "(the host must resolve, and only to public internet addresses)"
        )


def test_localhost_is_refused_even_if_the_resolver_lies():
    with pytest.raises(InvalidWebhook):
        check_target("http://localhost/", resolver=resolver_for({"localhost": [PUBLIC]}))


def test_a_public_name_is_accepted_with_every_address_checked():
    resolve = resolver_for({"hooks.tenant.example": [PUBLIC, "2606:4700::1111", PUBLIC]})
    target = check_target("HTTPS://Hooks.Tenant.Example./in/%7Eh?x=1 2", resolver=resolve)
    assert target == Target(
        "HTTPS://Hooks.Tenant.Example./in/%7Eh?x=1 2",
        "https",
        "hooks.tenant.example",
        443,
        "/in/%7Eh?x=1%202",
        (PUBLIC, "2606:4700::1111"),
        False,
    )
    assert target.host_header == "hooks.tenant.example"
    assert check_target("http://[2606:4700::1111]:8080/").host_header == "[2606:4700::1111]:8080"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/",
        "http://[::1]/",
        "http://10.0.0.5/",
        "http://100.64.1.1/",
    ],
)
def test_allow_private_lets_loopback_and_private_through(url):
    target = check_target(url, allow_private=True)
    assert all(address_allowed(a, allow_private=True) for a in target.addresses)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://[fe80::1]/",
        "http://224.0.0.1/",
        "http://0.0.0.0/",
        "http://[::ffff:169.254.169.254]/",
    ],
)
def test_allow_private_still_refuses_metadata_multicast_unspecified(url):
    with pytest.raises(InvalidWebhook):
        check_target(url, allow_private=True)


def test_allowlist_exact_and_subdomains_and_still_public_only():
    calls: list[str] = []
    resolve = resolver_for(
        {"a.example.com": [PUBLIC], "hooks.acme.io": [PUBLIC], "internal.example.com": ["192.168.0.10"]},
        calls,
    )
    allow = (".example.com", "hooks.acme.io")
    assert check_target("https://a.example.com/h", allowlist=allow, resolver=resolve).addresses == (PUBLIC,)
    assert check_target("https://HOOKS.acme.io./h", allowlist=allow, resolver=resolve).host == "hooks.acme.io"
    for url in (
        "https://example.com.evil.net/",
        "https://evilexample.com/",
        "https://example.com/",
        "https://acme.io/",
    ):
        with pytest.raises(InvalidWebhook, match=r"is not allowed; allowed: \.example\.com, hooks\.acme\.io"):
            check_target(url, allowlist=allow, resolver=resolve)
    assert calls == ["a.example.com", "hooks.acme.io"]  # hosts off the list are never even resolved
    with pytest.raises(InvalidWebhook, match="target address not allowed"):
        check_target("https://internal.example.com/", allowlist=allow, resolver=resolve)


def test_a_resolver_that_hangs_costs_at_most_resolve_timeout():
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(InvalidWebhook):
        check_target(
            "https://slow.example/", resolver=lambda h, p: release.wait(2) and [PUBLIC], resolve_timeout=0.3
        )
    release.set()
    assert time.monotonic() - started < 1.0


# ------------------------------------------------------------------------------------------- posting


def test_post_reaches_the_receiver_signed_and_verifiable():
    body = json.dumps({"event": "export.succeeded", "export_id": "e1"}).encode()
    with receiver() as server:
        port = server.server_address[1]
        target = check_target(f"http://localhost:{port}/hooks/in?t=1", allow_private=True)
        result = post_json(target, body, signed_headers("s3cret", body), sleep=NO_SLEEP)
    assert (result.ok, result.attempts, result.error) == (True, 1, None)
    [request] = server.requests
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert request["path"] == "/hooks/in?t=1" and request["body"] == body
    assert headers["host"] == f"localhost:{port}"
    assert headers["content-type"] == "application/json"
    assert headers[SIGNATURE_HEADER.lower()].startswith("sha256=")
    assert verify("s3cret", headers[TIMESTAMP_HEADER.lower()], body, headers[SIGNATURE_HEADER.lower()])
    assert not verify("other", headers[TIMESTAMP_HEADER.lower()], body, headers[SIGNATURE_HEADER.lower()])


def test_deliver_signs_the_payload_and_refuses_internal_targets():
    with receiver() as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/h"
        refused = send_webhook(Channels("k"), url, {"event": "export.failed"}, budget=10.0, sleep=NO_SLEEP)
        assert refused == DeliveryResult(False, 0, ERR_REFUSED)
        assert server.requests == []
        private = Channels("k", allow_private=True)
        result = send_webhook(private, url, {"event": "export.failed", "n": 1}, budget=10.0, sleep=NO_SLEEP)
        listed = Channels("k", ("hooks.acme.io",), allow_private=True)
        assert send_webhook(listed, url, {}, budget=10.0).error == ERR_NOT_ALLOWLISTED
    assert result.ok
    [request] = server.requests
    assert json.loads(request["body"]) == {"event": "export.failed", "n": 1}
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert verify("k", headers[TIMESTAMP_HEADER.lower()], request["body"], headers[SIGNATURE_HEADER.lower()])


def test_ipv6_loopback_receiver_with_allow_private():
    try:
        server_cm = receiver("::1")
        server = server_cm.__enter__()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        target = check_target(f"http://[::1]:{server.server_address[1]}/h", allow_private=True)
        assert post_json(target, b"{}", {}, sleep=NO_SLEEP).ok
        assert server.requests[0]["headers"]["Host"] == f"[::1]:{server.server_address[1]}"
    finally:
        server_cm.__exit__(None, None, None)


def test_redirect_is_not_followed():
    with receiver() as second, receiver(script=[302] * 5, location="") as first:
        first.location = f"http://127.0.0.1:{second.server_address[1]}/stolen"
        target = check_target(f"http://127.0.0.1:{first.server_address[1]}/h", allow_private=True)
        result = post_json(
            target, b'{"event":"export.succeeded"}', signed_headers("k", b"{}"), sleep=NO_SLEEP
        )
    assert (result.ok, result.attempts, result.error) == (False, 1, ERR_REDIRECT)
    assert result.error == "redirects are not followed"
    assert len(first.requests) == 1 and second.requests == []


@pytest.mark.parametrize("status", [301, 303, 307, 308])
def test_no_redirect_status_is_followed_or_retried(status):
    with receiver() as second, receiver(script=[status] * 5) as first:
        first.location = f"http://127.0.0.1:{second.server_address[1]}/"
        target = check_target(f"http://127.0.0.1:{first.server_address[1]}/", allow_private=True)
        assert post_json(target, b"{}", {}, sleep=NO_SLEEP).error == ERR_REDIRECT
    assert len(first.requests) == 1 and second.requests == []


def test_dns_rebinding_posts_to_the_checked_address_and_never_resolves_again():
    calls: list[str] = []
    answers = iter([[PUBLIC]])  # later lookups would answer 127.0.0.1

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers, ["127.0.0.1"])

    connected: list[tuple[str, int]] = []
    with receiver() as local:
        port = local.server_address[1]

        def connect(address: tuple[str, int], timeout: float) -> socket.socket:
            connected.append(address)
            # The "public" address is served by the local receiver so the request can be inspected.
            return socket.create_connection(("127.0.0.1", port), timeout)

        target = check_target(f"http://hooks.tenant.example:{port}/h", resolver=rebinding)
        result = post_json(target, b"{}", {}, connect=connect, sleep=NO_SLEEP)
    assert result.ok and connected == [(PUBLIC, port)]
    assert calls == ["hooks.tenant.example"]  # the second lookup never happens
    assert local.requests[0]["headers"]["Host"] == f"hooks.tenant.example:{port}"
    assert len(local.requests) == 1


def test_dns_rebinding_with_real_sockets_under_allow_private():
    answers = iter([["127.0.0.1"]])
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers, ["127.0.0.2"])

    with receiver("127.0.0.1") as checked:
        port = checked.server_address[1]
        try:
            other = _Server("127.0.0.2")
            other.server_close()
        except OSError:
            pytest.skip("127.0.0.2 not available")
        with receiver("127.0.0.2") as rebound:
            target = check_target(f"http://dev.hooks:{port}/", allow_private=True, resolver=rebinding)
            assert post_json(target, b"{}", {}, sleep=NO_SLEEP).ok
    assert calls == ["dev.hooks"] and len(checked.requests) == 1 and rebound.requests == []


def test_a_hand_made_target_is_still_refused_at_post_time():
    with receiver() as server:
        target = Target("x", "http", "x", server.server_address[1], "/", ("127.0.0.1",), False)
        assert post_json(target, b"{}", {}, sleep=NO_SLEEP) == DeliveryResult(False, 0, ERR_REFUSED)
    assert server.requests == []


@pytest.mark.parametrize("behaviour", ["hang", "drip"])
def test_a_hanging_receiver_costs_at_most_the_total_budget(behaviour):
    with raw_receiver(behaviour) as port:
        target = check_target(f"http://127.0.0.1:{port}/", allow_private=True)
        started = time.monotonic()
        result = post_json(
            target,
            b"{}",
            {},
            connect_timeout=0.5,
            read_timeout=0.6,
            total_budget=1.0,
            attempts=10,
            base_delay=0.01,
        )
        elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 1.0
    assert not result.ok and result.error == ERR_TIMEOUT and result.attempts >= 1


def test_5xx_and_429_are_retried_then_succeed():
    slept: list[float] = []
    with receiver(script=[503, 429, 500]) as server:
        target = check_target(f"http://127.0.0.1:{server.server_address[1]}/", allow_private=True)
        result = post_json(target, b"{}", {}, base_delay=0.1, sleep=slept.append)
    assert (result.ok, result.attempts) == (True, 4)
    assert len(server.requests) == 4 and len(slept) == 3
    assert all(0.05 * 2**i <= d <= 0.15 * 2**i for i, d in enumerate(slept))  # backoff with jitter


def test_5xx_until_attempts_run_out():
    with receiver(script=[503] * 9) as server:
        target = check_target(f"http://127.0.0.1:{server.server_address[1]}/", allow_private=True)
        assert post_json(target, b"{}", {}, attempts=3, sleep=NO_SLEEP) == DeliveryResult(
            False, 3, "HTTP 503"
        )


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_4xx_is_not_retried(status):
    with receiver(script=[status] * 5) as server:
        target = check_target(f"http://127.0.0.1:{server.server_address[1]}/", allow_private=True)
        assert post_json(target, b"{}", {}, sleep=NO_SLEEP) == DeliveryResult(False, 1, f"HTTP {status}")
    assert len(server.requests) == 1


def test_backoff_never_sleeps_past_the_budget():
    slept: list[float] = []
    with receiver(script=[503] * 9) as server:
        target = check_target(f"http://127.0.0.1:{server.server_address[1]}/", allow_private=True)
        result = post_json(target, b"{}", {}, total_budget=2, base_delay=10, attempts=4, sleep=slept.append)
    assert result == DeliveryResult(False, 1, "HTTP 503") and slept == []


def test_error_texts_are_short_and_stable():
    # Closed ports on both loopbacks, an unreachable network, a reset: all read "connection failed".
    for host in ("127.0.0.1", "::1"):
        port = closed_port(host)
        url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        result = post_json(check_target(url, allow_private=True), b"{}", {}, attempts=2, sleep=NO_SLEEP)
        assert result == DeliveryResult(False, 2, ERR_CONNECT) and result.error == "connection failed"

    def unreachable(address, timeout):
        raise OSError(113, "No route to host")

    def timing_out(address, timeout):
        raise TimeoutError("timed out connecting to 10.0.0.1:22")

    target = check_target(
        "http://hooks.tenant.example/", resolver=resolver_for({"hooks.tenant.example": [PUBLIC]})
    )
    assert post_json(target, b"{}", {}, connect=unreachable, attempts=1).error == "connection failed"
    assert post_json(target, b"{}", {}, connect=timing_out, attempts=1).error == "timed out"
    texts = {ERR_CONNECT, ERR_TIMEOUT, ERR_REDIRECT, ERR_REFUSED}
    assert texts == {
        "connection failed",
        "timed out",
        "redirects are not followed",
        "refused: target address not allowed",
    }


# ------------------------------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    out = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=hooks.tenant.example", "-addext", "subjectAltName=DNS:hooks.tenant.example",
         "-keyout", str(out / "key.pem"), "-out", str(out / "cert.pem")],
        check=True, capture_output=True, timeout=20,
    )  # fmt: skip
    return out / "cert.pem", out / "key.pem"


@contextmanager
def tls_receiver(cert, key) -> Iterator[tuple[_Server, list[str | None]]]:
    names: list[str | None] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda sock, name, _ctx: names.append(name)
    with receiver() as server:
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        yield server, names


def test_https_connects_to_the_checked_address_with_sni_and_verification(tls_cert):
    cert, key = tls_cert
    client_ctx = ssl.create_default_context(cafile=str(cert))
    with tls_receiver(cert, key) as (server, names):
        port = server.server_address[1]
        resolve = resolver_for({"hooks.tenant.example": ["127.0.0.1"], "other.tenant.example": ["127.0.0.1"]})
        good = check_target(f"https://hooks.tenant.example:{port}/h", allow_private=True, resolver=resolve)
        assert post_json(good, b"{}", {}, ssl_context=client_ctx, sleep=NO_SLEEP, total_budget=3).ok
        # The certificate is checked for the URL's host, not for the address connected to.
        wrong = check_target(f"https://other.tenant.example:{port}/h", allow_private=True, resolver=resolve)
        result = post_json(wrong, b"{}", {}, ssl_context=client_ctx, sleep=NO_SLEEP, total_budget=3)
        # And with the system trust store, the self-signed certificate is refused.
        untrusted = post_json(good, b"{}", {}, sleep=NO_SLEEP, total_budget=3)
    assert names[0] == "hooks.tenant.example"
    assert server.requests[0]["headers"]["Host"] == f"hooks.tenant.example:{port}"
    assert result == DeliveryResult(False, 1, ERR_CERTIFICATE) and untrusted == DeliveryResult(
        False, 1, ERR_CERTIFICATE
    )
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "url", ["http://2130706433/", "http://0x7f000001/", "http://0177.0.0.1/", "http://127.1/", "http://0/"]
)
def test_numeric_hosts_are_read_locally_not_left_to_dns(url):
    # A resolver that would call everything public: the numeric form is decoded (as inet_aton does) first.
    calls: list[str] = []
    with pytest.raises(InvalidWebhook):
        check_target(url, resolver=lambda h, p: calls.append(h) or [PUBLIC])
    assert calls == []
