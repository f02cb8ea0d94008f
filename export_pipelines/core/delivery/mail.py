"""Email over SMTP: one message to one address, each socket operation bounded by a timeout, so a
stuck mail server cannot hold the delivery sensor's tick (drain.py decides what a failure means)."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

SMTP_TIMEOUT_SECONDS = 10.0


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
