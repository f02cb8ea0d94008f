"""Webhook (HMAC-signed, retried) and email (SMTP) against real local receivers.

The receivers listen on 127.0.0.1, so every send here runs with allow_private (what
EXPORT_WEBHOOK_ALLOW_PRIVATE=1 sets): by default loopback targets are refused.
The export job records its notifications; one tick of the delivery sensor sends them.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
from aiosmtpd.controller import Controller

from export_pipelines.core.delivery.drain import Channels, DeliveryPolicy, send_webhook
from export_pipelines.core.delivery.webhook_client import verify
from export_pipelines.core.delivery.webhook_target import check_url_shape
from export_pipelines.orchestration.delivery_sensor import build_delivery_sensor
from export_pipelines.orchestration.resources import Notifier
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines.settings import Settings
from export_pipelines_tests.support.services import WEBHOOK_SECRET, run_export_job

# Retries at once, so one sensor tick shows the whole retry sequence.
NO_WAIT = DeliveryPolicy(base_delay_seconds=0.0, max_attempts=4)


class Receiver:
    def __init__(self, fail_first: int = 0, status: int = 500) -> None:
        self.fail_first, self.status = fail_first, status
        self.calls: list[tuple[dict[str, str], bytes]] = []


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str, ThreadingHTTPServer]]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.calls.append((dict(self.headers), body))
            code = rec.status if len(rec.calls) <= rec.fail_first else 200
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield rec, f"http://127.0.0.1:{server.server_port}/hooks/export", server
    server.shutdown()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, f"smtp://127.0.0.1:{port}"
    controller.stop()


def test_webhook_is_signed_and_retried_with_backoff(receiver):
    rec, url, _ = receiver
    rec.fail_first = 2
    result = send_webhook(
        Channels("s3cret", allow_private=True), url, {"event": "export.succeeded"}, budget=10.0, attempts=4
    )
    assert result.ok and result.attempts == 3
    headers, body = rec.calls[-1]
    assert verify("s3cret", headers["X-Export-Timestamp"], body, headers["X-Export-Signature"])
    assert not verify("other", headers["X-Export-Timestamp"], body, headers["X-Export-Signature"])


def test_webhook_4xx_is_not_retried(receiver):
    rec, url, _ = receiver
    rec.fail_first, rec.status = 10, 410
    result = send_webhook(Channels("s", allow_private=True), url, {}, budget=10.0, attempts=4)
    assert not result.ok and result.attempts == 1 and result.error == "HTTP 410"


def test_webhook_url_rules():
    check_url_shape("https://hooks.example.com/x", (".example.com",))
    for bad in ("ftp://x/y", "javascript:alert(1)", "http:///nohost"):
        with pytest.raises(ValueError, match="http"):
            check_url_shape(bad)
    with pytest.raises(ValueError, match=r"not allowed; allowed: \.example\.com"):
        check_url_shape("https://evil.test/x", (".example.com",))


def run_job(resources, store, **notify):
    """Run the export, then one tick of the delivery sensor (which sends what the run recorded)."""
    rid = store.create(tenant_id="t-008", resource="orders", **notify)
    config = export_run_config(tenant_id="t-008", resource="orders", request_id=rid, **notify)
    result = run_export_job(run_config=config, resources=resources, raise_on_error=False)
    sensor = build_delivery_sensor(Settings(), NO_WAIT)
    with dg.build_sensor_context(
        resources={"source": resources["source"], "notifier": resources["notifier"]}
    ) as context:
        sensor(context)
    return rid, result


def test_success_webhook_payload_and_email(receiver, smtp, dagster_resources, store, pg):
    rec, url, _ = receiver
    inbox, smtp_url = smtp
    notifier = Notifier(webhook_secret=WEBHOOK_SECRET, smtp_url=smtp_url, allow_private=True)
    resources = {**dagster_resources, "notifier": notifier}
    rid, result = run_job(resources, store, webhook_url=url, email="ops@example.com")
    assert result.success
    ((headers, body),) = rec.calls
    assert verify(WEBHOOK_SECRET, headers["X-Export-Timestamp"], body, headers["X-Export-Signature"])
    payload = json.loads(body)
    rows = pg.execute("SELECT count(*) FROM orders WHERE tenant_id = 't-008'").fetchone()[0]
    assert payload["event"] == "export.succeeded" and payload["export_id"] == rid
    assert (payload["tenant_id"], payload["resource"], payload["rows"]) == ("t-008", "orders", rows)
    assert payload["files"][0]["url"].startswith("http") and payload["files"][0]["rows"] == rows
    assert payload["manifest_url"] and payload["expires_at"] and payload["error"] is None
    assert set(payload) == {
        "event",
        "export_id",
        "tenant_id",
        "resource",
        "rows",
        "bytes",
        "files",
        "manifest_url",
        "expires_at",
        "error",
        "error_code",
    }
    (raw,) = inbox.messages
    mail = message_from_bytes(raw)
    assert mail["To"] == "ops@example.com"
    text = mail.get_payload(decode=True).decode()
    assert f"{rows} rows" in text and payload["files"][0]["url"] in text
    row = store.get(rid)
    assert row.status == "succeeded"
    with pg.cursor() as cur:
        notified, problem = cur.execute(
            "SELECT notified_at, notify_error FROM export_requests WHERE id = %s", [rid]
        ).fetchone()
    assert notified is not None and problem is None


def test_webhook_failure_is_recorded_and_does_not_fail_the_export(receiver, dagster_resources, store, pg):
    rec, url, _ = receiver
    rec.fail_first = 100
    resources = {**dagster_resources, "notifier": Notifier(webhook_secret=WEBHOOK_SECRET, allow_private=True)}
    rid, result = run_job(resources, store, webhook_url=url, email="x@example.com")
    assert result.success and store.get(rid).status == "succeeded"
    assert len(rec.calls) == 4  # retried with backoff, then given up
    problem = pg.execute("SELECT notify_error FROM export_requests WHERE id = %s", [rid]).fetchone()[0]
    # Only the webhook's stable text: the email was skipped (no SMTP_URL), which is the operator's matter.
    assert problem == "webhook failed after 4 attempt(s): HTTP 500"
