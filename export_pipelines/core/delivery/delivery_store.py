"""The `export_deliveries` table's only SQL: notifications (webhook, email) recorded by a run, a
sensor or the API, and sent by the delivery sensor, so a slow receiver never holds a run's slot.

A delivery is `pending` until it is `delivered` or `failed` (given up). Claiming one counts the
attempt and moves `next_attempt_at` a lease ahead, so a tick that dies mid-send leaves it due again
after the lease (deliveries are at least once) and two ticks never send the same one at once.
The deliveries one `enqueue_many` writes share `created_at` (one transaction): that is the group
whose outcome is recorded on the request row once none of it is pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from export_pipelines.core.storage.pg_store import PgStore

MAX_ERROR_CHARS = 200  # last_error is one of a few short texts; the cap only guards the column

_COLUMNS = "request_id, tenant_id, event, channel, target, payload, email_subject, email_body"


@dataclass(frozen=True)
class Delivery:
    """One claimed delivery; `attempts` counts the attempt about to be made."""

    id: int
    request_id: str | None
    tenant_id: str
    event: str
    channel: str  # "webhook" | "email"
    target: str
    payload: dict[str, Any]
    email_subject: str | None
    email_body: str | None
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class GroupMember:
    """The state of one delivery of a group (see the module docstring)."""

    channel: str
    status: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class DeliveryStats:
    """Deliveries of one channel, event and status, and their attempts (made, failed)."""

    channel: str
    event: str
    status: str
    deliveries: int
    attempts: int
    failed_attempts: int


class DeliveryStore(PgStore):
    """Every read and write of export_deliveries. Each method is one short transaction."""

    def enqueue(
        self,
        *,
        request_id: str | None,
        tenant_id: str,
        event: str,
        channel: str,
        target: str,
        payload: dict[str, Any],
        email_subject: str | None = None,
        email_body: str | None = None,
    ) -> int:
        (delivery_id,) = self.enqueue_many(
            [
                {
                    "request_id": request_id,
                    "tenant_id": tenant_id,
                    "event": event,
                    "channel": channel,
                    "target": target,
                    "payload": payload,
                    "email_subject": email_subject,
                    "email_body": email_body,
                }
            ]
        )
        return delivery_id

    def enqueue_many(self, deliveries: list[dict[str, Any]]) -> list[int]:
        """Insert deliveries in one transaction (so they share created_at: one group)."""
        ids: list[int] = []
        with self.transaction() as cur:
            for d in deliveries:
                row = cur.execute(
                    f"INSERT INTO export_deliveries ({_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    [
                        d["request_id"],
                        d["tenant_id"],
                        d["event"],
                        d["channel"],
                        d["target"],
                        Jsonb(d["payload"]),
                        d.get("email_subject"),
                        d.get("email_body"),
                    ],
                ).fetchone()
                assert row is not None
                ids.append(int(row[0]))
        return ids

    def claim_due(self, limit: int, lease_seconds: float) -> list[Delivery]:
        """Up to `limit` due deliveries, the oldest of each tenant first (round robin across tenants,
        so one tenant's backlog of failing receivers never delays another tenant's first one)."""
        rows = (
            self.conn.cursor(row_factory=dict_row)
            .execute(
                """
            UPDATE export_deliveries d
            SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => %s)
            WHERE d.id IN (
                SELECT id FROM export_deliveries
                WHERE id IN (
                    SELECT id FROM (
                        SELECT id, next_attempt_at,
                               row_number() OVER (PARTITION BY tenant_id ORDER BY next_attempt_at, id) AS n
                        FROM export_deliveries
                        WHERE status = 'pending' AND next_attempt_at <= now()
                    ) due
                    ORDER BY n, next_attempt_at, id
                    LIMIT %s
                )
                AND status = 'pending' AND next_attempt_at <= now()
                FOR UPDATE SKIP LOCKED
            )
            RETURNING d.*
            """,
                [lease_seconds, limit],
            )
            .fetchall()
        )
        return [
            Delivery(
                id=r["id"],
                request_id=str(r["request_id"]) if r["request_id"] is not None else None,
                tenant_id=r["tenant_id"],
                event=r["event"],
                channel=r["channel"],
                target=r["target"],
                payload=r["payload"],
                email_subject=r["email_subject"],
                email_body=r["email_body"],
                attempts=r["attempts"],
                created_at=r["created_at"],
            )
            for r in sorted(rows, key=lambda r: r["id"])
        ]

    def mark_delivered(self, delivery_id: int) -> None:
        self.execute(
            "UPDATE export_deliveries SET status = 'delivered', delivered_at = now(), last_error = NULL "
            "WHERE id = %s",
            [delivery_id],
        )

    # failed_attempts counts each attempt that did not deliver, when it is known not to have: the
    # metrics' count of failed attempts then only grows (`attempts` also counts one in flight).
    def retry_later(self, delivery_id: int, error: str, delay_seconds: float) -> None:
        self.execute(
            "UPDATE export_deliveries SET last_error = %s, failed_attempts = failed_attempts + 1, "
            "next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
            [error[:MAX_ERROR_CHARS], delay_seconds, delivery_id],
        )

    def give_up(self, delivery_id: int, error: str) -> None:
        self.execute(
            "UPDATE export_deliveries SET status = 'failed', last_error = %s, "
            "failed_attempts = failed_attempts + 1 WHERE id = %s",
            [error[:MAX_ERROR_CHARS], delivery_id],
        )

    def stats(self) -> list[DeliveryStats]:
        """Per channel, event and status: deliveries, attempts made and attempts that failed, for
        the metrics (`export-pipelines metrics`)."""
        rows = self.execute(
            "SELECT channel, event, status, count(*), coalesce(sum(attempts), 0), "
            "coalesce(sum(failed_attempts), 0) FROM export_deliveries GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        return [DeliveryStats(c, e, s, int(n), int(a), int(f)) for c, e, s, n, a, f in rows]

    def group(self, request_id: str, event: str, created_at: datetime) -> list[GroupMember]:
        rows = self.execute(
            "SELECT channel, status, attempts, last_error FROM export_deliveries "
            "WHERE request_id = %s AND event = %s AND created_at = %s ORDER BY id",
            [request_id, event, created_at],
        ).fetchall()
        return [GroupMember(*r) for r in rows]
