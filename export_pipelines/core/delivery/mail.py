"""Telling the requester: the webhook URL rules at request time, the HMAC signature receivers check
(README "Notifications"), and email over SMTP.

Webhooks are sent by core/delivery/webhook_client.py only (checked target, no redirects, a total time budget);
this module keeps the names callers already import (`check_webhook_url`, `sign`, `verify`, the header
names, `DeliveryResult`). A notification failure never fails the export: callers record the error.
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from export_pipelines.core.delivery.webhook_client import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryResult,
    check_url_shape,
    sign,
    verify,
)

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryResult",
    "check_webhook_url",
    "parse_allowlist",
    "send_email",
    "sign",
    "verify",
]

SMTP_TIMEOUT_SECONDS = 10.0


def parse_allowlist(text: str) -> tuple[str, ...]:
    """EXPORT_WEBHOOK_ALLOWLIST: comma-separated hosts; ".example.com" allows its subdomains."""
    return tuple(h.strip().lower() for h in text.split(",") if h.strip())


def check_webhook_url(
    url: str, allowlist: tuple[str, ...] = (), *, allow_private: bool | None = None
) -> None:
    """Request-time check of a webhook URL: webhook_client.check_url_shape (http(s), a valid host and
    port, no credentials, on the allowlist when there is one; no DNS: that is send time). Raises
    InvalidWebhook naming `webhook_url`."""
    check_url_shape(url, allowlist, allow_private=allow_private)


def send_email(
    smtp_url: str,
    to: str,
    subject: str,
    body: str,
    sender: str = "exports@localhost",
    *,
    timeout: float = SMTP_TIMEOUT_SECONDS,
) -> None:
    """smtp://[user:password@]host[:port] or smtps://…; STARTTLS with ?starttls=1. `timeout` bounds
    each socket operation, so a stuck SMTP server cannot hold the delivery sensor's tick."""
    parts = urlsplit(smtp_url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("SMTP_URL: must look like smtp://host:port or smtps://host:port")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(body)
    cls = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    port = parts.port or (465 if parts.scheme == "smtps" else 25)
    with cls(parts.hostname, port, timeout=timeout) as smtp:
        if "starttls=1" in (parts.query or ""):
            smtp.starttls()
        if parts.username:
            smtp.login(unquote(parts.username), unquote(parts.password or ""))
        smtp.send_message(msg)
