"""The `export_deliveries` table: notifications (webhook, email) recorded by the run and sent by
the delivery sensor, so a slow receiver never holds a run's slot (README "Notifications")."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from export_pipelines.core.pg_store import PgStore


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
        row = self.execute(
            """
            INSERT INTO export_deliveries
                (request_id, tenant_id, event, channel, target, payload, email_subject, email_body)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id
            """,
            [request_id, tenant_id, event, channel, target, Jsonb(payload), email_subject, email_body],
        ).fetchone()
        assert row is not None
        return int(row[0])
