"""Where a webhook may go: the check half of the webhook client (docs/security.md).

`check_target` resolves the host once (every address it resolves to) and refuses the URL unless each
address is a public internet address (`ipaddress`'s `is_global`, and none of loopback, private,
link-local, CGNAT, multicast, unspecified, reserved, documentation/benchmark, IPv4-mapped or -compatible
IPv6, NAT64 / 6to4 / Teredo embedding a non-public IPv4). Legacy numeric hosts (`2130706433`,
`0x7f000001`, `0177.0.0.1`, `127.1`) are read the way the C library reads them, then checked. The
`Target` it returns is what core/delivery/webhook_client.py connects to, so what is checked is what is used.

`allow_private=True` (setting `EXPORT_WEBHOOK_ALLOW_PRIVATE=1`, the dev stack only) lets loopback,
private (RFC 1918, fc00::/7), CGNAT and other non-global unicast addresses through; link-local (which
holds the cloud metadata service 169.254.169.254), multicast and unspecified addresses stay refused.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from export_pipelines.core.errors import InvalidWebhook

ERR_REFUSED = "refused: target address not allowed"
ERR_NOT_ALLOWLISTED = "refused: host not on the allowlist"
ERR_INVALID_URL = "refused: invalid webhook_url"

MAX_URL_LENGTH = 2048

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
_PATH_SAFE = "/:@!$&'()*+,;=-._~%?"

Resolver = Callable[[str, int], Iterable[str]]


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


def parse_allowlist(text: str) -> tuple[str, ...]:
    """EXPORT_WEBHOOK_ALLOWLIST: comma-separated hosts; ".example.com" allows its subdomains."""
    return tuple(h.strip().lower() for h in text.split(",") if h.strip())


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
