"""Telling the requester an export is done: the webhook payload (one shape for success and
failure, README "Notifications") and its delivery by webhook and email.

A notification failure never fails the export: `deliver` returns what went wrong, for the
request row, instead of raising.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from export_pipelines.core.delivery_store import DeliveryStore
from export_pipelines.core.errors import InvalidWebhook
from export_pipelines.core.manifest import FinalizedExport
from export_pipelines.core.notify import check_webhook_url, post_webhook, send_email

SUCCEEDED = "export.succeeded"
FAILED = "export.failed"


@dataclass(frozen=True)
class Channels:
    """How notifications go out: the webhook signing key and host allowlist, the SMTP server."""

    webhook_secret: str
    webhook_allowlist: tuple[str, ...] = ()
    smtp_url: str | None = None
    sender: str = "exports@localhost"


def webhook_payload(
    event: str,
    *,
    export_id: str,
    tenant_id: str,
    resource: str,
    rows: int,
    bytes_written: int,
    done: FinalizedExport | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The JSON body of every webhook; links and expiry only when the export succeeded."""
    expires_at: datetime | None = done.expires_at if done else None
    return {
        "event": event,
        "export_id": export_id,
        "tenant_id": tenant_id,
        "resource": resource,
        "rows": rows,
        "bytes": bytes_written,
        "files": [{"url": f.url, "rows": f.rows, "bytes": f.bytes} for f in done.files] if done else [],
        "manifest_url": done.manifest_url if done else None,
        "expires_at": expires_at.isoformat() if expires_at else None,
        "error": error,
    }


def download_url(done: FinalizedExport) -> str:
    """One link for the request row: the file, or the manifest when there are several files."""
    return done.files[0].url if len(done.files) == 1 else done.manifest_url


def ready_email_body(resource: str, done: FinalizedExport) -> str:
    return (
        f"Your export of {resource} is ready: {done.rows} rows in {len(done.files)} file(s).\n\n"
        + "\n".join(f.url for f in done.files)
        + f"\n\nThe link(s) expire at {done.expires_at:%Y-%m-%d %H:%M} UTC.\n"
    )


def enqueue_notification(
    deliveries: DeliveryStore,
    *,
    request_id: str | None,
    tenant_id: str,
    event: str,
    payload: dict[str, Any],
    webhook_url: str | None,
    email: str | None,
    email_subject: str,
    email_body: str,
) -> None:
    """Record one delivery per target; the delivery sensor sends them. Never sends, never raises
    for a bad target (the sensor records why it was not delivered)."""
    if webhook_url:
        deliveries.enqueue(
            request_id=request_id,
            tenant_id=tenant_id,
            event=event,
            channel="webhook",
            target=webhook_url,
            payload=payload,
        )
    if email:
        deliveries.enqueue(
            request_id=request_id,
            tenant_id=tenant_id,
            event=event,
            channel="email",
            target=email,
            payload=payload,
            email_subject=email_subject,
            email_body=email_body,
        )


def deliver(
    log: logging.Logger | Any,
    channels: Channels,
    payload: dict[str, Any],
    webhook_url: str | None,
    email: str | None,
    email_subject: str,
    email_body: str,
) -> str | None:
    """Send webhook and email; return what went wrong (None if all went well). Never raises."""
    problems = []
    if webhook_url:
        try:
            check_webhook_url(webhook_url, channels.webhook_allowlist)
            result = post_webhook(webhook_url, payload, channels.webhook_secret)
            if not result.ok:
                problems.append(f"webhook failed after {result.attempts} attempt(s): {result.error}")
        except InvalidWebhook as exc:
            problems.append(str(exc))
    if email:
        if not channels.smtp_url:
            log.info("email skipped: SMTP_URL is not set")
        else:
            try:
                send_email(channels.smtp_url, email, email_subject, email_body, sender=channels.sender)
            except Exception as exc:  # noqa: BLE001 - a notification never fails the export
                problems.append(f"email failed: {type(exc).__name__}: {exc}")
    for p in problems:
        log.warning(p)
    return "; ".join(problems) or None
