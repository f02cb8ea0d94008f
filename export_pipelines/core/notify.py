"""Telling the requester: HMAC-signed webhook (README "Notifications") and email over SMTP.

A notification failure never fails the export: callers record the returned error instead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

from export_pipelines.core.errors import InvalidWebhook

SIGNATURE_HEADER = "X-Export-Signature"
TIMESTAMP_HEADER = "X-Export-Timestamp"


def parse_allowlist(text: str) -> tuple[str, ...]:
    """EXPORT_WEBHOOK_ALLOWLIST: comma-separated hosts; ".example.com" allows its subdomains."""
    return tuple(h.strip().lower() for h in text.split(",") if h.strip())


def check_webhook_url(url: str, allowlist: tuple[str, ...] = ()) -> None:
    """http(s) only; with an allowlist, the host must be on it (exact or `.suffix`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhook(f"webhook_url: must be an http(s) URL, got {url!r}")
    if allowlist:
        host = parts.hostname.lower()
        if not any(host == a or (a.startswith(".") and host.endswith(a)) for a in allowlist):
            raise InvalidWebhook(
                f"webhook_url: host {host!r} is not allowed; allowed: {', '.join(allowlist)}"
            )


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver runs: constant-time comparison of the signature."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    attempts: int
    error: str | None = None


def post_webhook(
    url: str,
    payload: dict[str, Any],
    secret: str,
    *,
    attempts: int = 4,
    timeout: float = 10.0,
    base_delay: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """POST the payload, signed; retry 5xx/429/network errors with exponential backoff + jitter."""
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    error = ""
    for attempt in range(1, attempts + 1):
        timestamp = str(int(time.time()))
        req = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "export-pipelines-webhook/1",
                SIGNATURE_HEADER: sign(secret, timestamp, body),
                TIMESTAMP_HEADER: timestamp,
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if 200 <= resp.status < 300:
                    return DeliveryResult(True, attempt)
                error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
            if exc.code < 500 and exc.code != 429:
                return DeliveryResult(False, attempt, error)  # the receiver said no: retrying won't help
        except (urllib.error.URLError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if attempt < attempts:
            sleep(base_delay * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
    return DeliveryResult(False, attempts, error)


def send_email(smtp_url: str, to: str, subject: str, body: str, sender: str = "exports@localhost") -> None:
    """smtp://[user:password@]host[:port] or smtps://…; STARTTLS with ?starttls=1."""
    parts = urlsplit(smtp_url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("SMTP_URL: must look like smtp://host:port")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(body)
    cls = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    with cls(parts.hostname, parts.port or (465 if parts.scheme == "smtps" else 25), timeout=15) as smtp:
        if "starttls=1" in (parts.query or ""):
            smtp.starttls()
        if parts.username:
            smtp.login(unquote(parts.username), unquote(parts.password or ""))
        smtp.send_message(msg)
