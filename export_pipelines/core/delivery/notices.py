"""The words of a notification, composed once for every door: the webhook payload and the email's
subject and body when an export succeeded, failed or was canceled (docs/requests.md), and recording
one delivery per target for the delivery sensor to send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from export_pipelines.core.delivery.delivery_store import DeliveryStore
from export_pipelines.core.results import FinalizedExport

SUCCEEDED = "export.succeeded"
FAILED = "export.failed"
CANCELED = "export.canceled"
SCHEMA_CHANGED = "export.schema_changed"  # a feed's delivery whose columns or types moved


@dataclass(frozen=True)
class Notice:
    """One outcome of one export, as every channel tells it."""

    event: str
    payload: dict[str, Any]  # the webhook's JSON body
    subject: str
    body: str


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
    error_code: str | None = None,
) -> dict[str, Any]:
    """The JSON body of every webhook (one shape for every event); links and expiry only when the
    export succeeded; `error_code` (the request row's, core.errors.ERROR_CODES) and `error` when it
    did not."""
    return {
        "event": event,
        "export_id": export_id,
        "tenant_id": tenant_id,
        "resource": resource,
        "rows": rows,
        "bytes": bytes_written,
        "files": [{"url": f.url, "rows": f.rows, "bytes": f.bytes} for f in done.files] if done else [],
        "manifest_url": done.manifest_url if done else None,
        "expires_at": done.expires_at.isoformat() if done else None,
        "error": error,
        "error_code": error_code,
    }


def succeeded(*, export_id: str, tenant_id: str, resource: str, done: FinalizedExport) -> Notice:
    """The export's files are ready: links in the payload and in the email."""
    payload = webhook_payload(
        SUCCEEDED,
        export_id=export_id,
        tenant_id=tenant_id,
        resource=resource,
        rows=done.rows,
        bytes_written=done.bytes,
        done=done,
    )
    body = (
        f"Your export of {resource} is ready: {done.rows} rows in {len(done.files)} file(s).\n\n"
        + "\n".join(f.url for f in done.files)
        + f"\n\nThe link(s) expire at {done.expires_at:%Y-%m-%d %H:%M} UTC.\n"
    )
    return Notice(SUCCEEDED, payload, f"Your {resource} export is ready", body)


def schema_changed(*, export_id: str, tenant_id: str, resource: str, changes: dict[str, Any]) -> Notice:
    """A feed's delivery has another schema than the previous one: what was added, removed, retyped
    (a retyped column makes the delivery full: replace, do not merge)."""
    payload = {
        "event": SCHEMA_CHANGED,
        "export_id": export_id,
        "tenant_id": tenant_id,
        "resource": resource,
        "changes": changes,
    }
    lines = [f"added: {c['name']} ({c['type']})" for c in changes.get("added", [])]
    lines += [f"removed: {c['name']}" for c in changes.get("removed", [])]
    lines += [f"type changed: {c['name']} {c['from']} -> {c['to']}" for c in changes.get("type_changed", [])]
    body = (
        f"The columns of your {resource} feed changed with delivery {export_id}:\n" + "\n".join(lines) + "\n"
    )
    return Notice(SCHEMA_CHANGED, payload, f"The schema of your {resource} feed changed", body)


def ended(
    event: str,
    *,
    export_id: str,
    tenant_id: str,
    resource: str,
    rows: int,
    bytes_written: int,
    error: str,
    error_code: str | None = None,
) -> Notice:
    """The export ended without files: FAILED or CANCELED; `error` is what the tenant reads (a short
    stable message, core.errors.tenant_message), in the payload and as the email's body, with its
    code (a receiver branches on the code, a person reads the message)."""
    payload = webhook_payload(
        event,
        export_id=export_id,
        tenant_id=tenant_id,
        resource=resource,
        rows=rows,
        bytes_written=bytes_written,
        error=error,
        error_code=error_code,
    )
    verb = "was canceled" if event == CANCELED else "failed"
    return Notice(event, payload, f"Your {resource} export {verb}", error)


def enqueue(
    deliveries: DeliveryStore,
    notice: Notice,
    *,
    request_id: str | None,
    tenant_id: str,
    webhook_url: str | None,
    email: str | None,
) -> None:
    """Record one delivery per target (one transaction: one group); the delivery sensor sends them.
    Never sends, never raises for a bad target (the sensor records why it was not delivered)."""
    rows: list[dict[str, Any]] = []
    common = {
        "request_id": request_id,
        "tenant_id": tenant_id,
        "event": notice.event,
        "payload": notice.payload,
    }
    if webhook_url:
        rows.append({**common, "channel": "webhook", "target": webhook_url})
    if email:
        rows.append(
            {
                **common,
                "channel": "email",
                "target": email,
                "email_subject": notice.subject,
                "email_body": notice.body,
            }
        )
    if rows:
        deliveries.enqueue_many(rows)
