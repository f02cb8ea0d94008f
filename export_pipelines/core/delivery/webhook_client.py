"""A webhook client that a tenant cannot point at our own network (docs/security.md).

Two steps, so that what is checked is what is used:

    target = check_target(url, allow_private=..., allowlist=...)   # raises InvalidWebhook
    result = post_json(target, body, headers)                      # never raises for delivery failures

`check_target` (webhook_target.py) resolves the host once and refuses the URL unless every address is
a public internet address; the `Target` it returns is what `post_json` uses.

`post_json` connects to the addresses that were checked (no second DNS lookup, so DNS rebinding has no
gap), sends the URL's host in `Host` and, for https, as SNI with the certificate verified for that name.
It never follows a redirect, retries 5xx / 429 / network errors with backoff and jitter, and every
socket operation is bounded by what is left of `total_budget`: a receiver that hangs or drips bytes costs
at most about `total_budget` seconds. At most `MAX_RESPONSE_BYTES` of the response are read.

What the tenant reads (`DeliveryResult.error`, the `InvalidWebhook` message) is one of a few short,
stable texts (module constants below): never the OS's "Connection refused" vs "No route to host", never
which address or port answered, so the error column cannot be used as a port scanner.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from export_pipelines.core.delivery.webhook_target import (
    ERR_REFUSED,
    Target,
    address_allowed,
)

SIGNATURE_HEADER = "X-Export-Signature"
TIMESTAMP_HEADER = "X-Export-Timestamp"

# The texts a tenant may read in DeliveryResult.error (besides f"HTTP {status}"). Stable: apps match them.
ERR_CONNECT = "connection failed"
ERR_TIMEOUT = "timed out"
ERR_REDIRECT = "redirects are not followed"
ERR_TLS = "TLS handshake failed"
ERR_CERTIFICATE = "TLS certificate not valid"
ERR_INVALID_RESPONSE = "invalid HTTP response"

MAX_RESPONSE_BYTES = 8192  # status line + headers (+ whatever body came with them); the rest is dropped
USER_AGENT = "export-pipelines-webhook/2"

_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_BAD_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

Connector = Callable[[tuple[str, int], float], socket.socket]


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery did: `error` is one of the ERR_* texts or f"HTTP {status}" (tenants read it)."""

    ok: bool
    attempts: int
    error: str | None = None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver runs: constant-time comparison of the signature."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


# --------------------------------------------------------------------------------------------- posting


class _Failure(Exception):
    """One attempt failed; `text` is what the tenant reads, `retry` whether another attempt may help."""

    def __init__(self, text: str, retry: bool) -> None:
        super().__init__(text)
        self.text = text
        self.retry = retry


def _default_connect(address: tuple[str, int], timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Failure(ERR_TIMEOUT, True)
    return left


def _open(
    target: Target, deadline: float, connect_timeout: float, connect: Connector, ctx: ssl.SSLContext | None
) -> socket.socket:
    """Connect to the first checked address that answers; TLS with SNI and verification for the host."""
    failure = _Failure(ERR_CONNECT, True)
    for address in target.addresses:
        if not address_allowed(address, allow_private=target.allow_private):
            raise _Failure(ERR_REFUSED, False)  # a Target built by hand: still never an internal address
        timeout = min(connect_timeout, _remaining(deadline))
        try:
            sock = connect((address, target.port), timeout)
        except TimeoutError:
            failure = _Failure(ERR_TIMEOUT, True)
            continue
        except OSError:
            failure = _Failure(ERR_CONNECT, True)
            continue
        if target.scheme == "http":
            return sock
        try:
            sock.settimeout(min(connect_timeout, _remaining(deadline)))  # one deadline for the handshake
            context = ctx or ssl.create_default_context()
            return context.wrap_socket(sock, server_hostname=target.host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise _Failure(ERR_CERTIFICATE, False) from exc
        except TimeoutError:
            sock.close()
            failure = _Failure(ERR_TIMEOUT, True)
        except (ssl.SSLError, OSError):
            sock.close()
            failure = _Failure(ERR_TLS, True)
        except _Failure:
            sock.close()
            raise
    raise failure


def _request_bytes(target: Target, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [f"POST {target.path} HTTP/1.1", f"Host: {target.host_header}"]
    fixed = {"host", "content-length", "connection", "transfer-encoding"}
    merged = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    merged.update({k: v for k, v in headers.items() if k.lower() not in fixed})
    for name, value in merged.items():
        value = str(value)
        if not _HEADER_NAME_RE.fullmatch(name) or _HEADER_VALUE_BAD_RE.search(value):
            raise ValueError(f"invalid header {name!r}")
        lines.append(f"{name}: {value}")
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def _send_all(sock: socket.socket, data: bytes, deadline: float, read_timeout: float) -> None:
    view = memoryview(data)
    while view:
        sock.settimeout(min(read_timeout, _remaining(deadline)))
        sent = sock.send(view[:65536])
        view = view[sent:]


def _read_status(sock: socket.socket, deadline: float) -> int:
    """The final status code; reads at most MAX_RESPONSE_BYTES, each recv bounded by the deadline."""
    buf = b""
    while True:
        while True:  # parse what is there: skip interim 1xx responses
            eol = buf.find(b"\n")
            if eol < 0:
                break
            fields = buf[:eol].rstrip(b"\r").split(None, 2)
            if (
                len(fields) < 2
                or not fields[0].startswith(b"HTTP/1.")
                or not re.fullmatch(rb"[1-5]\d\d", fields[1])
            ):
                raise _Failure(ERR_INVALID_RESPONSE, True)
            status = int(fields[1])
            if status >= 200 or status == 101:
                return status
            end = min((i for i in (buf.find(b"\r\n\r\n"), buf.find(b"\n\n")) if i >= 0), default=-1)
            if end < 0:
                break
            buf = buf[end:].lstrip(b"\r\n")
        if len(buf) >= MAX_RESPONSE_BYTES:
            raise _Failure(ERR_INVALID_RESPONSE, True)
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(MAX_RESPONSE_BYTES - len(buf))
        if not chunk:
            raise _Failure(ERR_CONNECT, True)  # closed without an answer
        buf += chunk


def _attempt(
    target: Target,
    body: bytes,
    headers: Mapping[str, str],
    deadline: float,
    connect_timeout: float,
    read_timeout: float,
    connect: Connector,
    ctx: ssl.SSLContext | None,
) -> int:
    request = _request_bytes(target, body, headers)
    sock = _open(target, deadline, connect_timeout, connect, ctx)
    try:
        _send_all(sock, request, deadline, read_timeout)
        return _read_status(sock, min(deadline, time.monotonic() + read_timeout))
    except TimeoutError as exc:
        raise _Failure(ERR_TIMEOUT, True) from exc
    except ssl.SSLError as exc:
        raise _Failure(ERR_TLS, True) from exc
    except OSError as exc:
        raise _Failure(ERR_CONNECT, True) from exc
    finally:
        sock.close()


def post_json(
    target: Target,
    body: bytes,
    headers: Mapping[str, str] | Callable[[], Mapping[str, str]] = (lambda: {}),
    *,
    connect_timeout: float = 3.0,
    read_timeout: float = 5.0,
    total_budget: float = 15.0,
    attempts: int = 4,
    base_delay: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    ssl_context: ssl.SSLContext | None = None,
    connect: Connector | None = None,
) -> DeliveryResult:
    """POST `body` to a checked target; never raises for a failed delivery, returns what happened.

    `headers` (or a function returning them, called per attempt so timestamps stay fresh) are sent with
    Host, Content-Length and `Connection: close` set here. 2xx: ok. 3xx: failed with ERR_REDIRECT, not
    followed, not retried. 4xx other than 429: failed, not retried. 5xx, 429, network errors and
    timeouts: retried after base_delay * 2**(n-1) * U(0.5, 1.5) s, up to `attempts` in all, and never
    past `total_budget` s from the call (a backoff that would end past it ends the delivery instead).
    `connect((address, port), timeout) -> socket` and `ssl_context` are for tests.
    """
    if not target.addresses or not all(
        address_allowed(a, allow_private=target.allow_private) for a in target.addresses
    ):
        return DeliveryResult(False, 0, ERR_REFUSED)  # a Target not made by check_target
    deadline = time.monotonic() + total_budget
    connect = connect or _default_connect
    error = ERR_TIMEOUT
    made = 0
    for attempt in range(1, max(1, attempts) + 1):
        if deadline - time.monotonic() <= 0.05:
            break
        made = attempt
        try:
            status = _attempt(
                target,
                body,
                headers() if callable(headers) else headers,
                deadline,
                connect_timeout,
                read_timeout,
                connect,
                ssl_context,
            )
        except _Failure as failure:
            error, retry = failure.text, failure.retry
        else:
            if 200 <= status < 300:
                return DeliveryResult(True, attempt)
            if 300 <= status < 400:
                return DeliveryResult(False, attempt, ERR_REDIRECT)
            error, retry = f"HTTP {status}", status >= 500 or status == 429
        if not retry:
            return DeliveryResult(False, attempt, error)
        if attempt < attempts:
            delay = base_delay * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
            if time.monotonic() + delay >= deadline - 0.05:
                break  # the next attempt would start past the budget
            sleep(delay)
    return DeliveryResult(False, made, error)


def signed_headers(secret: str, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    """The signature receivers check (docs/requests.md):
    X-Export-Signature = sha256=<hex HMAC(secret, timestamp.body)>."""
    timestamp = timestamp or str(int(time.time()))
    return {SIGNATURE_HEADER: sign(secret, timestamp, body), TIMESTAMP_HEADER: timestamp}
