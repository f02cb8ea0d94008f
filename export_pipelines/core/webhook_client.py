"""A webhook client that a tenant cannot point at our own network (issue 12: findings 5, 6, 16).

Two steps, so that what is checked is what is used:

    target = check_target(url, allow_private=..., allowlist=...)   # raises InvalidWebhook
    result = post_json(target, body, headers)                      # never raises for delivery failures

`check_target` resolves the host once (every address it resolves to) and refuses the URL unless each
address is a public internet address (`ipaddress`'s `is_global`, and none of loopback, private,
link-local, CGNAT, multicast, unspecified, reserved, documentation/benchmark, IPv4-mapped or -compatible
IPv6, NAT64 / 6to4 / Teredo embedding a non-public IPv4). Legacy numeric hosts (`2130706433`,
`0x7f000001`, `0177.0.0.1`, `127.1`) are read the way the C library reads them, then checked.

`post_json` connects to the addresses that were checked (no second DNS lookup, so DNS rebinding has no
gap), sends the URL's host in `Host` and, for https, as SNI with the certificate verified for that name.
It never follows a redirect, retries 5xx / 429 / network errors with backoff and jitter, and every
socket operation is bounded by what is left of `total_budget`: a receiver that hangs or drips bytes costs
at most about `total_budget` seconds. At most `MAX_RESPONSE_BYTES` of the response are read.

What the tenant reads (`DeliveryResult.error`, the `InvalidWebhook` message) is one of a few short,
stable texts (module constants below): never the OS's "Connection refused" vs "No route to host", never
which address or port answered, so the error column cannot be used as a port scanner.

`allow_private=True` (setting `EXPORT_WEBHOOK_ALLOW_PRIVATE=1`, the dev stack only) lets loopback,
private (RFC 1918, fc00::/7), CGNAT and other non-global unicast addresses through; link-local (which
holds the cloud metadata service 169.254.169.254), multicast and unspecified addresses stay refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from export_pipelines.core.errors import InvalidWebhook

__all__ = [
    "ERR_CERTIFICATE",
    "ERR_CONNECT",
    "ERR_INVALID_RESPONSE",
    "ERR_INVALID_URL",
    "ERR_NOT_ALLOWLISTED",
    "ERR_REDIRECT",
    "ERR_REFUSED",
    "ERR_TIMEOUT",
    "ERR_TLS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryResult",
    "Target",
    "address_allowed",
    "check_target",
    "check_url_shape",
    "deliver",
    "post_json",
    "sign",
    "signed_headers",
    "verify",
]

SIGNATURE_HEADER = "X-Export-Signature"
TIMESTAMP_HEADER = "X-Export-Timestamp"

# The texts a tenant may read in DeliveryResult.error (besides f"HTTP {status}"). Stable: apps match them.
ERR_CONNECT = "connection failed"
ERR_TIMEOUT = "timed out"
ERR_REDIRECT = "redirects are not followed"
ERR_REFUSED = "refused: target address not allowed"
ERR_NOT_ALLOWLISTED = "refused: host not on the allowlist"
ERR_INVALID_URL = "refused: invalid webhook_url"
ERR_TLS = "TLS handshake failed"
ERR_CERTIFICATE = "TLS certificate not valid"
ERR_INVALID_RESPONSE = "invalid HTTP response"

MAX_URL_LENGTH = 2048
MAX_RESPONSE_BYTES = 8192  # status line + headers (+ whatever body came with them); the rest is dropped
USER_AGENT = "export-pipelines-webhook/2"

# Not global, whatever this Python's `ipaddress` tables say (they changed across 3.11 .. 3.13).
_ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # CGNAT shared address space
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "240.0.0.0/4",  # reserved, and 255.255.255.255
        "::/8",  # unspecified, loopback, IPv4-compatible (::a.b.c.d), IPv4-mapped
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo 2001::/32 included)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the last 32 bits are an IPv4 address a gateway reaches
_LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")

_HOST_RE = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*"
)
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_BAD_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PATH_SAFE = "/:@!$&'()*+,;=-._~%?"

Resolver = Callable[[str, int], Iterable[str]]
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


@dataclass(frozen=True)
class Target:
    """A checked webhook target: connect to `addresses` (in order), say `host` in Host and SNI."""

    url: str
    scheme: str  # "http" | "https"
    host: str  # lower-case ASCII (IDNA), no trailing dot, no brackets around an IPv6 literal
    port: int
    path: str  # path and query, percent-encoded ASCII; "/" at least
    addresses: tuple[str, ...]  # every address the host resolved to, each one checked
    allow_private: bool = False

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


# --------------------------------------------------------------------------------------------- checking


def _refuse(reason: str) -> InvalidWebhook:
    messages = {
        ERR_INVALID_URL: "webhook_url: must be an http(s) URL with a valid host name and port and no "
        f"credentials, at most {MAX_URL_LENGTH} characters",
        ERR_REFUSED: "webhook_url: refused: target address not allowed (the host must resolve, "
        "and only to public internet addresses)",
    }
    exc = InvalidWebhook(messages[reason])
    exc.delivery_error = reason  # type: ignore[attr-defined]  # the short text deliver() records
    return exc


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address leads to (mapped, compatible, NAT64, 6to4, Teredo client)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d, IPv4-compatible (deprecated)
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _classify(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """ "public", "internal" (non-global unicast: allowed with allow_private) or "never"."""
    if ip.is_multicast or ip.is_unspecified:
        return "never"
    if ip.is_link_local or (ip.version == 4 and ip in _LINK_LOCAL_V4):
        return "never"  # 169.254.169.254, fe80::/10: cloud metadata and friends
    worst = "public"
    if ip.version == 6:
        for v4 in _embedded_v4(ip):
            kind = _classify(v4)
            if kind == "never":
                return "never"
            if kind == "internal":
                worst = "internal"
    if (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_reserved
        or any(ip.version == net.version and ip in net for net in _ALWAYS_REFUSED)
    ):
        return "internal"
    return worst


def address_allowed(address: str, *, allow_private: bool = False) -> bool:
    """Whether a webhook may connect to this address (an IP literal; anything else: no)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    kind = _classify(ip)
    return kind == "public" or (allow_private and kind == "internal")


def _numeric_host(host: str) -> str | None:
    """The address a numeric host denotes, read as the C library would (so `0177.0.0.1` is 127.0.0.1)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host) and re.fullmatch(
        r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}", host
    ):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _system_resolver(host: str, port: int) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _resolve(resolver: Resolver, host: str, port: int, timeout: float | None) -> list[str]:
    """Call the resolver, giving up after `timeout` s (getaddrinfo itself cannot be interrupted)."""
    if timeout is None:
        return list(resolver(host, port))
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["addresses"] = list(resolver(host, port))
        except Exception as exc:  # noqa: BLE001 - reported to the caller below
            box["error"] = exc

    worker = threading.Thread(target=run, name="webhook-resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if "addresses" not in box:
        raise OSError("resolution failed or timed out")
    return box["addresses"]


def _normal_host(hostname: str) -> str:
    host = hostname.lower()
    if host.endswith("."):
        host = host[:-1]  # "localhost." is localhost; one trailing dot only
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise _refuse(ERR_INVALID_URL) from exc
    return host


def _on_allowlist(host: str, allowlist: Iterable[str]) -> bool:
    for entry in allowlist:
        entry = entry.strip().lower().rstrip(".")
        if not entry or entry == ".":
            continue
        if host == entry or (entry.startswith(".") and host.endswith(entry)):
            return True
    return False


@dataclass(frozen=True)
class _Parsed:
    scheme: str
    host: str  # normalised (see Target.host)
    port: int
    path: str
    numeric: str | None  # the address a numeric host denotes, in any of its legacy forms


def _parse(url: str, allowlist: Iterable[str]) -> _Parsed:
    """The URL-shape and allowlist rules: everything check_target decides without DNS."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH or not url.isprintable():
        raise _refuse(ERR_INVALID_URL)
    try:
        parts = urlsplit(url.strip())
        hostname = parts.hostname
    except ValueError as exc:
        raise _refuse(ERR_INVALID_URL) from exc
    if parts.scheme not in ("http", "https") or not hostname or "@" in parts.netloc:
        raise _refuse(ERR_INVALID_URL)
    try:
        port = parts.port
    except ValueError:
        port = 0
    port = port if port is not None else (443 if parts.scheme == "https" else 80)
    if not 0 < port < 65536:
        raise _bad_port()
    host = _normal_host(hostname)

    numeric = _numeric_host(host)
    if numeric is None and not _HOST_RE.fullmatch(host):
        raise _refuse(ERR_INVALID_URL)

    entries = tuple(allowlist)
    if entries and not _on_allowlist(host, entries):
        raise _not_allowlisted(host, entries)

    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_PATH_SAFE)
    return _Parsed(parts.scheme, host, port, path, numeric)


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


def check_url_shape(url: str, allowlist: Iterable[str] = (), *, allow_private: bool | None = None) -> None:
    """The rules of check_target that need no DNS, for request time (so a tenant hears at once).

    Raises InvalidWebhook (field `webhook_url`) when the URL is not http(s), has no valid host or port,
    carries credentials, is longer than MAX_URL_LENGTH, or names a host not on a non-empty allowlist.
    With `allow_private` given (True or False), also the address rules for hosts that need no lookup:
    IP literals in every numeric form and `localhost` names. With None (default) those wait for
    send time, where check_target resolves the host and checks every address anyway.
    """
    parsed = _parse(url, allowlist)
    if allow_private is None:
        return
    if parsed.numeric is not None:
        if not address_allowed(parsed.numeric, allow_private=allow_private):
            raise _refuse(ERR_REFUSED)
    elif _is_localhost(parsed.host) and not allow_private:
        raise _refuse(ERR_REFUSED)


def check_target(
    url: str,
    *,
    allow_private: bool = False,
    allowlist: Iterable[str] = (),
    resolver: Resolver | None = None,
    resolve_timeout: float | None = 5.0,
) -> Target:
    """Parse, resolve and check a webhook URL; the returned Target is what `post_json` connects to.

    Raises InvalidWebhook (field `webhook_url`) when the URL is not http(s), carries credentials, names
    a host not on a non-empty `allowlist` (`host` exact, `.example.com` any subdomain), does not resolve,
    or resolves to any address that is not public (see the module docstring). The message never says
    which address the host resolved to. `resolver(host, port) -> addresses` defaults to getaddrinfo.
    """
    parsed = _parse(url, allowlist)
    host, port = parsed.host, parsed.port
    if parsed.numeric is not None:
        addresses = [parsed.numeric]
        host = parsed.numeric if ":" in parsed.numeric else host  # an IPv6 literal, normalised
    else:
        if not allow_private and _is_localhost(host):
            raise _refuse(ERR_REFUSED)  # RFC 6761: always loopback, whatever the resolver says
        try:
            addresses = _resolve(resolver or _system_resolver, host, port, resolve_timeout)
        except (OSError, UnicodeError, ValueError) as exc:
            raise _refuse(ERR_REFUSED) from exc
    checked: list[str] = []
    for address in addresses:
        if not address_allowed(address, allow_private=allow_private):
            raise _refuse(ERR_REFUSED)
        normal = str(ipaddress.ip_address(address.split("%", 1)[0]))
        if normal not in checked:
            checked.append(normal)
    if not checked:
        raise _refuse(ERR_REFUSED)
    return Target(url, parsed.scheme, host, port, parsed.path, tuple(checked), allow_private)


def _bad_port() -> InvalidWebhook:
    exc = InvalidWebhook("webhook_url: has an invalid port: allowed 1..65535 (default 80 / 443)")
    exc.delivery_error = ERR_INVALID_URL  # type: ignore[attr-defined]
    return exc


def _not_allowlisted(host: str, entries: tuple[str, ...]) -> InvalidWebhook:
    # The tenant's own host and the deployment's allowlist: nothing about our network.
    exc = InvalidWebhook(f"webhook_url: host {host!r} is not allowed; allowed: {', '.join(entries)}")
    exc.delivery_error = ERR_NOT_ALLOWLISTED  # type: ignore[attr-defined]
    return exc


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
    """The DESIGN 3.6 signature: X-Export-Signature = sha256=<hex HMAC(secret, timestamp.body)>."""
    timestamp = timestamp or str(int(time.time()))
    return {SIGNATURE_HEADER: sign(secret, timestamp, body), TIMESTAMP_HEADER: timestamp}


def deliver(
    url: str,
    payload: Mapping[str, Any],
    secret: str,
    *,
    allow_private: bool = False,
    allowlist: Iterable[str] = (),
    resolver: Resolver | None = None,
    **post: Any,
) -> DeliveryResult:
    """check_target + post_json of the signed payload; a refused target is a failed delivery (0 attempts)."""
    try:
        target = check_target(url, allow_private=allow_private, allowlist=allowlist, resolver=resolver)
    except InvalidWebhook as exc:
        return DeliveryResult(False, 0, getattr(exc, "delivery_error", ERR_REFUSED))
    body = json.dumps(dict(payload), separators=(",", ":"), default=str).encode()
    return post_json(target, body, lambda: signed_headers(secret, body), **post)
