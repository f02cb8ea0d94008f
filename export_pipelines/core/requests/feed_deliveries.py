"""A feed's deliveries in export_requests: the numbered row of its next delivery, and the record
each succeeded delivery leaves for the next (where the next window starts, and the snapshots
tombstones are kept for). The feeds themselves are feed_store.py's; the rows' status transitions
stay request_store.py's.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from export_pipelines.core.errors import DeliveryInProgress
from export_pipelines.core.requests.request_row import StoredRequest
from export_pipelines.core.requests.request_store import RequestRows, as_request
from export_pipelines.core.storage.pg_errors import refusal


class FeedDeliveries(RequestRows):
    """The feed-delivery statements of export_requests; each method is one short transaction on the
    store's connection (its own, or the one it is lent)."""

    def submit_delivery(
        self,
        *,
        feed_id: str,
        tenant_id: str,
        resource: str,
        format: str,
        compression: str | None,
        filters: dict[str, Any],
        columns: list[str] | None,
        webhook_url: str | None,
        email: str | None,
        full_refresh: bool,
        destination_id: str | None = None,
    ) -> StoredRequest:
        """A feed's next delivery: a pending row numbered after the feed's last one. The tenant's cap
        applies (TooManyActive); a delivery still active refuses another (DeliveryInProgress)."""
        try:
            with self.transaction() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('export_feed'), hashtext(%s))", [feed_id])
                active = cur.execute(
                    "SELECT id FROM export_requests WHERE feed_id = %s "
                    "AND status IN ('pending', 'queued', 'running')",
                    [feed_id],
                ).fetchone()
                if active is not None:
                    raise DeliveryInProgress(str(active["id"]))
                row = cur.execute(
                    """
                    INSERT INTO export_requests
                        (id, tenant_id, resource, format, compression, filters, columns, webhook_url, email,
                         origin, feed_id, sequence, feed_full_refresh, destination_id)
                    SELECT %(id)s, %(tenant_id)s, %(resource)s, %(format)s, %(compression)s,
                           %(filters)s::jsonb, %(columns)s, %(webhook_url)s, %(email)s, 'feed', %(feed_id)s,
                           coalesce(max(sequence), 0) + 1, %(full_refresh)s, %(destination_id)s::uuid
                    FROM export_requests WHERE feed_id = %(feed_id)s
                    RETURNING *
                    """,
                    {
                        "id": uuid.uuid4(),
                        "tenant_id": tenant_id,
                        "resource": resource,
                        "format": format,
                        "compression": compression,
                        "filters": json.dumps(filters or {}),
                        "columns": columns,
                        "webhook_url": webhook_url,
                        "email": email,
                        "feed_id": feed_id,
                        "full_refresh": full_refresh,
                        "destination_id": destination_id,
                    },
                ).fetchone()
                assert row is not None
                return as_request(row)
        except psycopg.Error as exc:
            mapped = refusal(exc)
            if mapped is exc:
                raise
            raise mapped from None

    def previous_delivery(self, feed_id: str, before_sequence: int) -> dict[str, Any] | None:
        """The record of the feed's last succeeded delivery before this one: what the next delivery
        starts from, with the destination it went to (`destination_id`, None: our bucket). A failed
        or canceled delivery is never a starting point, so its changes go to the next delivery that
        succeeds."""
        row = self.execute(
            "SELECT feed_record || jsonb_build_object('destination_id', destination_id::text) AS feed_record "
            "FROM export_requests WHERE feed_id = %s AND sequence < %s "
            "AND status IN ('succeeded', 'expired') AND feed_record IS NOT NULL "
            "ORDER BY sequence DESC LIMIT 1",
            [feed_id, before_sequence],
        ).fetchone()
        return row["feed_record"] if row else None

    def record_delivery(self, request_id: str, record: dict[str, Any]) -> None:
        """What this delivery leaves for the next (written before the row is marked succeeded)."""
        self.execute(
            "UPDATE export_requests SET feed_record = %s::jsonb, updated_at = now() WHERE id = %s",
            [json.dumps(record), request_id],
        )

    def oldest_feed_snapshots(self) -> list[str]:
        """Each feed's last succeeded delivery's snapshot: tombstones older than all are pruned."""
        rows = self.execute(
            "SELECT DISTINCT ON (feed_id) feed_record->>'snapshot' AS snapshot FROM export_requests "
            "WHERE feed_id IN (SELECT id FROM export_feeds) AND status IN ('succeeded', 'expired') "
            "AND feed_record IS NOT NULL ORDER BY feed_id, sequence DESC"
        ).fetchall()
        return [r["snapshot"] for r in rows if r["snapshot"]]
