"""Sending recorded notifications (what the delivery sensor calls): due deliveries claimed, sent
with retries, backoff and a time budget per tick, then the outcome on the request row
(docs/operations.md).

Every webhook goes through webhook_client.py: the target is resolved and checked (no internal
addresses unless `allow_private`), the checked address is the one connected to, redirects are not
followed, and each attempt has a total time budget. What tenants read (`notify_error`) is built from
that module's short stable texts only. A notification failure never fails the export.
"""

from __future__ import annotations

import json
import logging
import random
import smtplib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from export_pipelines.core.delivery.delivery_store import Delivery, DeliveryStore, GroupMember
from export_pipelines.core.delivery.mail import send_email
from export_pipelines.core.delivery.webhook_client import (
    ERR_CONNECT,
    ERR_INVALID_RESPONSE,
    ERR_TIMEOUT,
    ERR_TLS,
    DeliveryResult,
    post_json,
    signed_headers,
)
from export_pipelines.core.delivery.webhook_target import ERR_REFUSED, check_target
from export_pipelines.core.errors import InvalidWebhook

_LOG = logging.getLogger(__name__)

# Email texts tenants may read (stable, like webhook_client's ERR_*): never the SMTP server's words.
ERR_EMAIL_RECIPIENT = "recipient refused"
ERR_EMAIL_REJECTED = "rejected by the mail server"
ERR_EMAIL_UNAVAILABLE = "mail server unavailable"
ERR_EMAIL_NOT_CONFIGURED = "skipped: SMTP_URL is not set"

# Worth another attempt later; anything else (refused target, redirect, 4xx, bad certificate) is not.
_RETRYABLE = {ERR_TIMEOUT, ERR_CONNECT, ERR_TLS, ERR_INVALID_RESPONSE, ERR_EMAIL_UNAVAILABLE, "HTTP 429"}


@dataclass(frozen=True)
class Channels:
    """How notifications go out: the webhook signing key and host allowlist, the SMTP server."""

    webhook_secret: str
    webhook_allowlist: tuple[str, ...] = ()
    smtp_url: str | None = None
    sender: str = "exports@localhost"
    allow_private: bool = False  # EXPORT_WEBHOOK_ALLOW_PRIVATE=1: loopback/private receivers (dev only)


@dataclass(frozen=True)
class DeliveryPolicy:
    """How the delivery sensor sends. One attempt is one HTTP request (or one SMTP session) bounded
    by `attempt_budget_seconds` (DNS included); retries wait base * 2**(n-1) s (±25 %, at most
    `max_delay_seconds`) and stop after `max_attempts`. A tick starts no attempt that could end past
    `tick_budget_seconds`; `parallel` attempts run at once, so hanging receivers cost one budget
    per batch, not one per delivery."""

    max_attempts: int = 6  # 30 s, 1, 2, 4, 8 min: about a quarter of an hour of receiver downtime
    base_delay_seconds: float = 30.0
    max_delay_seconds: float = 3600.0
    attempt_budget_seconds: float = 10.0
    connect_timeout_seconds: float = 3.0
    read_timeout_seconds: float = 5.0
    tick_budget_seconds: float = 20.0
    parallel: int = 4
    lease_seconds: float = 300.0  # a claimed delivery is due again after this if the tick died

    def backoff(self, attempts: int) -> float:
        delay = self.base_delay_seconds * 2 ** max(0, attempts - 1)
        return min(self.max_delay_seconds, delay) * random.uniform(0.75, 1.25)


# ----------------------------------------------------------------------------------------- sending


def send_webhook(
    channels: Channels,
    url: str,
    payload: dict[str, Any],
    *,
    budget: float,
    attempts: int = 1,
    connect_timeout: float = 3.0,
    read_timeout: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """Check the target (DNS included) and POST the signed payload, all within `budget` seconds.
    Never raises; `error` is one of webhook_client's stable texts or "HTTP <status>"."""
    started = time.monotonic()
    try:
        target = check_target(
            url,
            allow_private=channels.allow_private,
            allowlist=channels.webhook_allowlist,
            resolve_timeout=min(5.0, budget / 2),
        )
    except InvalidWebhook as exc:
        return DeliveryResult(False, 0, getattr(exc, "delivery_error", ERR_REFUSED))
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    left = budget - (time.monotonic() - started)
    if left <= 0.05:
        return DeliveryResult(False, 0, ERR_TIMEOUT)
    return post_json(
        target,
        body,
        lambda: signed_headers(channels.webhook_secret, body),
        connect_timeout=min(connect_timeout, left),
        read_timeout=min(read_timeout, left),
        total_budget=left,
        attempts=attempts,
        sleep=sleep,
    )


def send_mail(
    channels: Channels, to: str, subject: str, body: str, *, timeout: float, log: Any = None
) -> DeliveryResult:
    """One SMTP session; never raises. The error is a stable text (the server's reply is logged only)."""
    if not channels.smtp_url:
        return DeliveryResult(False, 0, ERR_EMAIL_NOT_CONFIGURED)
    try:
        send_email(channels.smtp_url, to, subject, body, sender=channels.sender, timeout=timeout)
    except smtplib.SMTPRecipientsRefused as exc:
        error = ERR_EMAIL_RECIPIENT if _permanent(exc) else ERR_EMAIL_UNAVAILABLE
    except smtplib.SMTPResponseException as exc:
        error = ERR_EMAIL_REJECTED if 500 <= exc.smtp_code < 600 else ERR_EMAIL_UNAVAILABLE
    except TimeoutError:
        error = ERR_TIMEOUT
    except (OSError, smtplib.SMTPException) as exc:
        error = ERR_EMAIL_UNAVAILABLE
        if log is not None:
            log.warning(f"email to the mail server failed: {type(exc).__name__}")
    except ValueError:  # SMTP_URL malformed: the deployment's problem, not the tenant's
        error = ERR_EMAIL_NOT_CONFIGURED
    else:
        return DeliveryResult(True, 1)
    return DeliveryResult(False, 1, error)


def _permanent(exc: smtplib.SMTPRecipientsRefused) -> bool:
    return all(500 <= code < 600 for code, _msg in exc.recipients.values())


def _problem(channel: str, attempts: int, error: str | None) -> str:
    if attempts == 0:  # refused before any connection (target, allowlist, configuration)
        return f"{channel} not sent: {error or ERR_REFUSED}"
    return f"{channel} failed after {attempts} attempt(s): {error or ERR_CONNECT}"


# ----------------------------------------------------------------------------------------- draining


@dataclass
class DrainReport:
    """What one drain did, for the sensor's log line and the tests."""

    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.delivered} delivered, {self.retrying} to retry, {self.failed} given up "
            f"in {self.seconds:.1f} s"
        )


class RequestNotes(Protocol):
    """Where outcomes go: core.requests.request_store.RequestStore."""

    def record_notification(self, request_id: str, error: str | None) -> bool: ...


def _attempt(channels: Channels, policy: DeliveryPolicy, d: Delivery, log: Any) -> DeliveryResult:
    try:
        if d.channel == "webhook":
            return send_webhook(
                channels,
                d.target,
                d.payload,
                budget=policy.attempt_budget_seconds,
                connect_timeout=policy.connect_timeout_seconds,
                read_timeout=policy.read_timeout_seconds,
            )
        return send_mail(
            channels,
            d.target,
            d.email_subject or "",
            d.email_body or "",
            timeout=policy.attempt_budget_seconds / 2,
            log=log,
        )
    except Exception as exc:  # noqa: BLE001 - one delivery must never stop the others
        log.warning(f"delivery {d.id} ({d.channel}) raised {type(exc).__name__}")
        return DeliveryResult(False, 1, ERR_CONNECT)


def drain_deliveries(
    deliveries: DeliveryStore,
    requests: RequestNotes,
    channels: Channels,
    policy: DeliveryPolicy = DeliveryPolicy(),
    log: Any = _LOG,
) -> DrainReport:
    """Send due deliveries for at most about policy.tick_budget_seconds; record each outcome, and on
    the request row (notified_at, notify_error) once every delivery of its group is done."""
    started = time.monotonic()
    deadline = started + policy.tick_budget_seconds
    report = DrainReport()
    with ThreadPoolExecutor(max_workers=max(1, policy.parallel), thread_name_prefix="delivery") as pool:
        while time.monotonic() + policy.attempt_budget_seconds <= deadline:
            batch = deliveries.claim_due(policy.parallel, policy.lease_seconds)
            if not batch:
                break
            results = list(pool.map(lambda d: _attempt(channels, policy, d, log), batch))
            for d, result in zip(batch, results, strict=True):
                _record(deliveries, requests, policy, d, result, report, log)
    report.seconds = time.monotonic() - started
    return report


def _record(
    deliveries: DeliveryStore,
    requests: RequestNotes,
    policy: DeliveryPolicy,
    d: Delivery,
    result: DeliveryResult,
    report: DrainReport,
    log: Any,
) -> None:
    if result.ok:
        deliveries.mark_delivered(d.id)
        report.delivered += 1
    else:
        error = result.error or ERR_CONNECT
        report.errors.append(error)
        if error == ERR_EMAIL_NOT_CONFIGURED:
            log.info(f"delivery {d.id}: email skipped: SMTP_URL is not set (or not an smtp:// URL)")
        retryable = error in _RETRYABLE or error.startswith("HTTP 5")
        if retryable and d.attempts < policy.max_attempts:
            deliveries.retry_later(d.id, error, policy.backoff(d.attempts))
            report.retrying += 1
            return
        deliveries.give_up(d.id, error)
        report.failed += 1
        log.warning(f"delivery {d.id} ({d.channel}, {d.event}) given up after {d.attempts}: {error}")
    if d.request_id is not None:
        members = deliveries.group(d.request_id, d.event, d.created_at)
        if members and all(m.status != "pending" for m in members):
            requests.record_notification(d.request_id, group_error(members))


def group_error(members: list[GroupMember]) -> str | None:
    """What the request row's notify_error says: only stable texts, None when all arrived. An email
    skipped because the deployment has no SMTP server is the operator's matter (logged), not the
    tenant's."""
    problems = [
        _problem(m.channel, m.attempts, m.last_error)
        for m in members
        if m.status == "failed" and m.last_error != ERR_EMAIL_NOT_CONFIGURED
    ]
    return "; ".join(problems) or None
