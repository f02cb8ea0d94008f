"""The trust boundary of webhooks: no internal targets (SSRF), no redirects followed, and deliveries
that a hanging receiver cannot make block a run's slot, against the real PostgreSQL and S3 server.

Receivers are local HTTP servers on 127.0.0.1 in threads. The export job records its notification
in export_deliveries; the delivery sensor (one tick, `build_sensor_context`) sends it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import pytest

from export_pipelines.core.delivery.delivery_store import DeliveryStore, GroupMember
from export_pipelines.core.delivery.drain import (
    Channels,
    DeliveryPolicy,
    drain_deliveries,
    group_error,
    send_webhook,
)
from export_pipelines.core.delivery.notices import Notice, enqueue
from export_pipelines.core.delivery.webhook_client import ERR_REDIRECT, ERR_TIMEOUT, verify
from export_pipelines.core.delivery.webhook_target import ERR_REFUSED, check_url_shape
from export_pipelines.core.errors import InvalidWebhook
from export_pipelines.orchestration.delivery_sensor import build_delivery_sensor
from export_pipelines.orchestration.resources import Notifier
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines.settings import Settings
from export_pipelines_tests.support.services import WEBHOOK_SECRET, run_export_job

LOG = logging.getLogger("test-delivery")
FAST = DeliveryPolicy(base_delay_seconds=0.0, attempt_budget_seconds=3.0, tick_budget_seconds=10.0)


# ------------------------------------------------------------------------------------------- receivers


class Receiver:
    """An HTTP server on 127.0.0.1 that records what reaches it; `mode` says how it answers."""

    def __init__(self, mode: str = "ok", location: str = "", fail_first: int = 0) -> None:
        self.mode, self.location, self.fail_first = mode, location, fail_first
        self.calls: list[dict[str, Any]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                receiver.calls.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )

            def do_POST(self) -> None:
                self._record()
                if receiver.mode == "hang":
                    receiver.release.wait(60)  # answers nothing until the test ends
                    return
                if receiver.mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", receiver.location)
                elif len(receiver.calls) <= receiver.fail_first:
                    self.send_response(500)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST  # a followed redirect arrives as a GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/hooks/export"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def deliveries(source_url: str) -> Iterator[DeliveryStore]:
    with DeliveryStore(source_url).migrate_once() as d:
        d.execute("TRUNCATE export_deliveries")
        yield d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- helpers


def run_export(
    resources: dict[str, Any], store: Any, tenant: str = "t-008", **notify: Any
) -> tuple[str, Any]:
    rid = store.create(tenant_id=tenant, resource="orders", **notify)
    config = export_run_config(tenant_id=tenant, resource="orders", request_id=rid, **notify)
    instance = dg.DagsterInstance.ephemeral()
    result = run_export_job(run_config=config, resources=resources, raise_on_error=False, instance=instance)
    assert result.success
    return rid, (instance, result)


def notify_step_seconds(ran: Any) -> float:
    """How long the notify op took, from the run's step stats."""
    instance, result = ran
    (stats,) = [s for s in instance.get_run_step_stats(result.run_id) if s.step_key == "exports.notify"]
    return stats.end_time - stats.start_time


def delivery_tick(resources: dict[str, Any], notifier: Notifier, policy: DeliveryPolicy = FAST) -> float:
    """One tick of the export_delivery_sensor; returns how long it took."""
    sensor = build_delivery_sensor(Settings(), policy)
    started = time.monotonic()
    with dg.build_sensor_context(resources={"source": resources["source"], "notifier": notifier}) as ctx:
        sensor(ctx)
    return time.monotonic() - started


def notified(pg: Any, rid: str) -> tuple[datetime | None, str | None]:
    return pg.execute("SELECT notified_at, notify_error FROM export_requests WHERE id = %s", [rid]).fetchone()


# --------------------------------------------------------------------------------- no internal targets


def test_loopback_webhook_refused_by_default_and_notify_error_is_stable(
    receivers, dagster_resources, store, pg, deliveries
):
    """The export's webhook to a loopback receiver is never sent by default, and what the tenant
    reads is the same for an open and a closed port (no port scanner)."""
    rec = receivers()
    closed = f"http://127.0.0.1:{free_port()}/hooks"
    notifier = Notifier(webhook_secret=WEBHOOK_SECRET)  # the default: allow_private off
    resources = {**dagster_resources, "notifier": notifier}
    open_rid, _ = run_export(resources, store, webhook_url=rec.url)
    closed_rid, _ = run_export(resources, store, webhook_url=closed)
    delivery_tick(resources, notifier)
    assert rec.calls == []
    stable = f"webhook failed after 1 attempt(s): {ERR_REFUSED}"
    for rid in (open_rid, closed_rid):
        at, error = notified(pg, rid)
        assert at is not None and error == stable


# Every form reaches the receiver on 127.0.0.1 if nothing refuses it.
LOOPBACK_FORMS = [
    "http://127.0.0.1:{port}/h",
    "http://localhost:{port}/h",
    "http://LOCALHOST.:{port}/h",
    "http://2130706433:{port}/h",
    "http://0x7f000001:{port}/h",
    "http://0177.0.0.1:{port}/h",
    "http://127.1:{port}/h",
    "http://[::ffff:127.0.0.1]:{port}/h",
]


@pytest.mark.parametrize("form", LOOPBACK_FORMS)
def test_loopback_forms_never_reach_the_receiver(receivers, form):
    rec = receivers()
    url = form.format(port=rec.port)
    result = send_webhook(Channels(WEBHOOK_SECRET), url, {"event": "export.failed"}, budget=10.0)
    assert rec.calls == []
    # What the request row's notify_error says of it.
    problem = group_error([GroupMember("webhook", "failed", result.attempts, result.error)])
    assert problem == f"webhook not sent: {ERR_REFUSED}"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # CGNAT
        "http://[::1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[::ffff:169.254.169.254]/",
        "http://0xa9fea9fe/",  # 169.254.169.254 again
    ],
)
def test_internal_addresses_refused_at_once(url):
    started = time.monotonic()
    result = send_webhook(Channels(WEBHOOK_SECRET), url, {}, budget=5.0)
    assert (result.ok, result.attempts, result.error) == (False, 0, ERR_REFUSED)
    assert time.monotonic() - started < 1.0  # nothing was connected to


def test_allow_private_lets_the_dev_receiver_through_but_never_metadata(receivers):
    rec = receivers()
    dev = Channels(WEBHOOK_SECRET, allow_private=True)
    assert send_webhook(dev, rec.url, {"event": "x"}, budget=5.0).ok
    (call,) = rec.calls
    assert verify(WEBHOOK_SECRET, call["headers"]["X-Export-Timestamp"], call["body"],
                  call["headers"]["X-Export-Signature"])  # fmt: skip
    for url in ("http://169.254.169.254/", "http://224.0.0.1/", "http://0.0.0.0/"):
        assert send_webhook(dev, url, {}, budget=5.0).error == ERR_REFUSED


def test_settings_and_resources_default_to_refusing_private_targets(monkeypatch):
    assert Settings.from_env({}).webhook_allow_private is False
    assert Settings.from_env({"EXPORT_WEBHOOK_ALLOW_PRIVATE": "1"}).webhook_allow_private is True
    assert Notifier(webhook_secret="s").allow_private is False


def test_request_time_check_needs_no_dns_and_refuses_literal_internal_addresses():
    """check_url_shape (what request-time validation calls) refuses bad shapes and, when asked,
    literal internal addresses, without resolving anything."""
    for bad in ("ftp://x/y", "http://u:p@example.com/", "http://exa mple.com/"):
        with pytest.raises(InvalidWebhook, match=r"^webhook_url: must be an http\(s\) URL"):
            check_url_shape(bad)
    for bad in ("http://example.com:0/", "http://example.com:99999/", "http://example.com:x/"):
        with pytest.raises(InvalidWebhook, match=r"^webhook_url: has an invalid port"):
            check_url_shape(bad)
    with pytest.raises(InvalidWebhook, match=r"host 'evil\.test' is not allowed; allowed: \.example\.com"):
        check_url_shape("https://evil.test/x", (".example.com",))
    check_url_shape("http://127.0.0.1:9/h")  # None: address rules wait for send time
    check_url_shape("http://127.0.0.1:9/h", allow_private=True)
    check_url_shape("https://no-such-host.invalid/h", allow_private=False)  # names: no DNS here
    for internal in ("http://0x7f000001/", "http://localhost/", "http://169.254.169.254/"):
        with pytest.raises(InvalidWebhook, match="target address not allowed"):
            check_url_shape(internal, allow_private=False)
    with pytest.raises(InvalidWebhook, match="target address not allowed"):
        check_url_shape("http://169.254.169.254/", allow_private=True)
    check_url_shape("https://hooks.example.com/x", (".example.com",))  # a subdomain of the allowlist


# ---------------------------------------------------------------------------------------- no redirects


def test_redirect_from_allowlisted_receiver_is_not_followed(
    receivers, dagster_resources, store, pg, deliveries
):
    other = receivers()
    first = receivers(mode="redirect", location=f"http://localhost:{other.port}/steal")
    notifier = Notifier(webhook_secret=WEBHOOK_SECRET, webhook_allowlist="127.0.0.1", allow_private=True)
    resources = {**dagster_resources, "notifier": notifier}
    rid, _ = run_export(resources, store, webhook_url=first.url)
    delivery_tick(resources, notifier)
    assert [c["method"] for c in first.calls] == ["POST"]  # one attempt: a redirect is final
    assert other.calls == []  # neither the body nor the signature headers left the allowlisted host
    assert notified(pg, rid)[1] == f"webhook failed after 1 attempt(s): {ERR_REDIRECT}"


# ---------------------------------------------------------------------------------- a hanging receiver


def test_hanging_webhook_holds_neither_the_notify_op_nor_the_sensor(
    receivers, dagster_resources, store, pg, deliveries
):
    rec = receivers(mode="hang")
    notifier = Notifier(webhook_secret=WEBHOOK_SECRET, allow_private=True)
    resources = {**dagster_resources, "notifier": notifier}
    rid, result = run_export(resources, store, webhook_url=rec.url)
    assert notify_step_seconds(result) < 2.0  # the op records the delivery and returns
    policy = DeliveryPolicy(max_attempts=1, attempt_budget_seconds=2.0, tick_budget_seconds=5.0)
    seconds = delivery_tick(resources, notifier, policy)
    assert len(rec.calls) == 1
    assert 1.5 < seconds < policy.tick_budget_seconds  # the attempt ended at its budget
    assert notified(pg, rid)[1] == f"webhook failed after 1 attempt(s): {ERR_TIMEOUT}"


def test_sensor_tick_stays_within_its_budget_with_many_hanging_receivers(receivers, deliveries, store):
    rec = receivers(mode="hang")
    for n in range(12):
        enqueue(
            deliveries,
            Notice("export.succeeded", {"n": n}, "", ""),
            request_id=None,
            tenant_id=f"t-{n:03d}",
            webhook_url=rec.url,
            email=None,
        )
    policy = DeliveryPolicy(attempt_budget_seconds=1.0, tick_budget_seconds=2.5, parallel=3)
    channels = Channels(WEBHOOK_SECRET, allow_private=True)
    report = drain_deliveries(deliveries, store, channels, policy, LOG)
    assert report.seconds < policy.tick_budget_seconds + 0.5
    assert report.retrying == 6 and report.delivered == 0  # two batches of three, then out of time
    waiting = deliveries.execute(
        "SELECT count(*) FILTER (WHERE attempts = 0), count(*) FILTER (WHERE last_error = %s) "
        "FROM export_deliveries WHERE status = 'pending'",
        [ERR_TIMEOUT],
    ).fetchone()
    assert waiting == (6, 6)  # the rest wait for the next tick; nothing was lost


def test_default_policy_bounds_each_tick():
    policy = DeliveryPolicy()
    assert policy.attempt_budget_seconds <= policy.tick_budget_seconds <= 20
    assert policy.connect_timeout_seconds + policy.read_timeout_seconds <= policy.attempt_budget_seconds


# ------------------------------------------------------------------------------------------- the queue


def test_retries_with_backoff_then_delivered_once_and_the_row_says_so(receivers, deliveries, store, pg):
    rec = receivers(fail_first=2)
    rid = store.create(tenant_id="t-001", resource="orders", webhook_url=rec.url)
    enqueue(
        deliveries,
        Notice("export.succeeded", {"event": "export.succeeded", "export_id": rid}, "", ""),
        request_id=rid,
        tenant_id="t-001",
        webhook_url=rec.url,
        email=None,
    )
    channels = Channels(WEBHOOK_SECRET, allow_private=True)
    slow = DeliveryPolicy(base_delay_seconds=60.0)
    report = drain_deliveries(deliveries, store, channels, slow, LOG)
    assert (report.retrying, len(rec.calls)) == (1, 1)
    (next_at,) = deliveries.execute(
        "SELECT next_attempt_at - now() FROM export_deliveries WHERE request_id = %s", [rid]
    ).fetchone()
    assert 40 < next_at.total_seconds() < 80  # backed off, not retried in the same tick
    assert notified(pg, rid) == (None, None)  # not done yet
    deliveries.execute("UPDATE export_deliveries SET next_attempt_at = now()")
    drain_deliveries(deliveries, store, channels, FAST, LOG)
    assert len(rec.calls) == 3
    assert json.loads(rec.calls[-1]["body"])["export_id"] == rid
    at, error = notified(pg, rid)
    assert at is not None and error is None
    assert drain_deliveries(deliveries, store, channels, FAST, LOG).delivered == 0  # sent once


def test_one_tenants_backlog_does_not_delay_another_tenants_first_delivery(deliveries):
    def add(tenant: str) -> None:
        enqueue(
            deliveries,
            Notice("export.succeeded", {}, "", ""),
            request_id=None,
            tenant_id=tenant,
            webhook_url="https://hooks.example.com/x",
            email=None,
        )

    for _ in range(20):
        add("t-noisy")
    add("t-quiet")
    claimed = deliveries.claim_due(2, lease_seconds=300)
    assert sorted(d.tenant_id for d in claimed) == ["t-noisy", "t-quiet"]
    assert all(d.attempts == 1 for d in claimed)
    again = {d.id for d in deliveries.claim_due(100, lease_seconds=300)}
    assert again.isdisjoint(d.id for d in claimed)  # leased: no second sender at once
