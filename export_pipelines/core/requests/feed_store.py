"""`export_feeds` (schema in core/storage/migrations/feeds.py): a tenant's standing export and its
schedule (docs/feeds.md). Each delivery is an ordinary export_requests row
(FeedDeliveries.submit_delivery); this store holds the feeds, when each is due, and whether its next
delivery must be full.

Frequencies are UTC: hourly (top of the hour), daily (midnight), weekly (Monday midnight), monthly
(the 1st, midnight), manual (never due; `POST /v1/feeds/{id}/run`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from psycopg.rows import RowFactory, dict_row

from export_pipelines.core.errors import InvalidRequest
from export_pipelines.core.requests.catalog import Catalog, allowed
from export_pipelines.core.requests.request import build_request, check_notify
from export_pipelines.core.storage.pg_store import PgStore

NOT_A_DESTINATION = "not a destination of this tenant (GET /v1/destinations lists them)"
FREQUENCIES = ("hourly", "daily", "weekly", "monthly", "manual")
MODES = ("incremental", "full")
FIELDS = (
    "resource",
    "format",
    "compression",
    "columns",
    "filters",
    "frequency",
    "mode",
    "webhook_url",
    "email",
    "destination_id",
)


@dataclass(frozen=True)
class Feed:
    id: str
    tenant_id: str
    resource: str
    format: str
    compression: str | None
    columns: list[str] | None
    filters: dict[str, Any]
    frequency: str
    mode: str
    webhook_url: str | None
    email: str | None
    origin: str
    full_refresh_pending: bool
    next_due_at: datetime | None
    created_at: datetime
    updated_at: datetime
    # A destination of the tenant its deliveries go to (None: our bucket and links).
    destination_id: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Feed:
        uuids = ("id", "destination_id")
        return cls(
            **{
                k: (str(row[k]) if k in uuids and row[k] is not None else row[k])
                for k in cls.__dataclass_fields__
            }
        )

    def document(self) -> dict[str, Any]:
        """What the API and the CLI show."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "resource": self.resource,
            "format": self.format,
            "compression": self.compression,
            "columns": self.columns,
            "filters": self.filters,
            "frequency": self.frequency,
            "mode": self.mode,
            "notify": {"webhook_url": self.webhook_url, "email": self.email},
            "destination_id": self.destination_id,
            "origin": self.origin,
            "full_refresh_pending": self.full_refresh_pending,
            "next_due_at": self.next_due_at.isoformat() if self.next_due_at else None,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def next_due(frequency: str, after: datetime) -> datetime | None:
    """The first UTC boundary of the frequency strictly after `after` (None: manual)."""
    t = after.astimezone(UTC)
    if frequency == "hourly":
        return t.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if frequency == "daily":
        return day + timedelta(days=1)
    if frequency == "weekly":
        return day + timedelta(days=7 - day.weekday())
    if frequency == "monthly":
        return (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    return None


def check_feed(
    catalog: Catalog, webhook_allowlist: tuple[str, ...], fields: dict[str, Any]
) -> dict[str, Any]:
    """The feed's fields checked as any export's (the request checks), plus frequency and mode.
    Returns them with defaults filled; raises InvalidRequest naming the field."""
    out = {
        "format": "csv",
        "compression": None,
        "columns": None,
        "filters": {},
        "mode": "incremental",
        "webhook_url": None,
        "email": None,
        "destination_id": None,
        **fields,
    }
    destination_id = out["destination_id"]
    if destination_id is not None and (not isinstance(destination_id, str) or not _is_uuid(destination_id)):
        raise InvalidRequest("destination_id", NOT_A_DESTINATION)
    if out.get("frequency") not in FREQUENCIES:
        raise InvalidRequest(
            "frequency", f"{out.get('frequency')!r} is not a frequency; allowed: {allowed(list(FREQUENCIES))}"
        )
    if out["mode"] not in MODES:
        raise InvalidRequest("mode", f"{out['mode']!r} is not a mode; allowed: {allowed(list(MODES))}")
    filters = out["filters"] or {}
    if isinstance(filters, dict) and ({"date_from", "date_to"} & set(filters)):
        raise InvalidRequest(
            "filters", "a feed has no date range: it delivers what changed since its last delivery"
        )
    request = build_request(
        catalog,
        tenant_id=out["tenant_id"],
        resource=out.get("resource"),
        format=out["format"],
        compression=out["compression"],
        columns=out["columns"],
        filters=filters,
    )
    spec = catalog.resource(request.resource)
    if out["mode"] == "incremental" and not spec.change_tracking:
        raise InvalidRequest(
            "mode",
            f"resource {spec.name!r} has no change tracking: allowed modes for it: full "
            "(the data team enables change_tracking in the catalog)",
        )
    needed = spec.primary_key or (spec.key,)
    missing = [c for c in needed if c not in request.columns]
    if missing:
        raise InvalidRequest("columns", f"must include the primary key {list(needed)}; missing {missing}")
    check_notify(out["webhook_url"], out["email"], webhook_allowlist)
    out["compression"] = request.compression
    return out


class FeedStore(PgStore):
    """Every statement on export_feeds."""

    row_factory: ClassVar[RowFactory[Any]] = dict_row

    def create(self, fields: dict[str, Any], *, origin: str = "tenant", now: datetime | None = None) -> Feed:
        now = now or datetime.now(UTC)
        with self.transaction() as cur:
            _hold_destination(cur, fields["tenant_id"], fields.get("destination_id"))
            row = cur.execute(
                """
                INSERT INTO export_feeds (tenant_id, resource, format, compression, columns, filters,
                                          frequency, mode, webhook_url, email, destination_id, origin,
                                          next_due_at)
                VALUES (%(tenant_id)s, %(resource)s, %(format)s, %(compression)s, %(columns)s,
                        %(filters)s::jsonb, %(frequency)s, %(mode)s, %(webhook_url)s, %(email)s,
                        %(destination_id)s, %(origin)s, %(next_due_at)s)
                RETURNING *
                """,
                {
                    **{k: fields.get(k) for k in ("tenant_id", *FIELDS)},
                    "filters": json.dumps(fields.get("filters") or {}),
                    "origin": origin,
                    "next_due_at": next_due(fields["frequency"], now),
                },
            ).fetchone()
        return Feed.from_row(row)

    def ensure_default(self, tenant_id: str, fields: dict[str, Any]) -> Feed:
        """The enterprise tenant's default feed (the monthly dump), made once; its mode follows
        the deployment's setting."""
        row = self.execute(
            "SELECT * FROM export_feeds WHERE tenant_id = %s AND resource = %s "
            "AND origin = 'enterprise_default'",
            [tenant_id, fields["resource"]],
        ).fetchone()
        if row is None:
            return self.create({**fields, "tenant_id": tenant_id}, origin="enterprise_default")
        # (Only the mode follows the setting; the rest is the tenant's to change.)
        feed = Feed.from_row(row)
        if feed.mode != fields["mode"]:
            feed = self.update(tenant_id, feed.id, {"mode": fields["mode"]}) or feed
        return feed

    def get(self, tenant_id: str | None, feed_id: str) -> Feed | None:
        """The feed, if it is this tenant's (None: any tenant's, the service's own doors)."""
        if not _is_uuid(feed_id):
            return None
        row = self.execute(
            "SELECT * FROM export_feeds WHERE id = %s AND (%s::text IS NULL OR tenant_id = %s)",
            [feed_id, tenant_id, tenant_id],
        ).fetchone()
        return Feed.from_row(row) if row else None

    def list(self, tenant_id: str) -> list[Feed]:
        rows = self.execute(
            "SELECT * FROM export_feeds WHERE tenant_id = %s ORDER BY created_at, id", [tenant_id]
        ).fetchall()
        return [Feed.from_row(r) for r in rows]

    def update(self, tenant_id: str, feed_id: str, changes: dict[str, Any]) -> Feed | None:
        feed = self.get(tenant_id, feed_id)
        if feed is None:
            return None
        sets = {k: v for k, v in changes.items() if k in FIELDS}
        params: dict[str, Any] = {**sets, "id": feed_id}
        if "filters" in sets:
            params["filters"] = json.dumps(sets["filters"] or {})
        assignments = [f"{k} = %({k})s" + ("::jsonb" if k == "filters" else "") for k in sets]
        if "frequency" in sets:
            assignments.append("next_due_at = %(next_due_at)s")
            params["next_due_at"] = next_due(sets["frequency"], datetime.now(UTC))
        if not assignments:
            return feed
        with self.transaction() as cur:
            if sets.get("destination_id") is not None:
                _hold_destination(cur, tenant_id, sets["destination_id"])
            row = cur.execute(
                f"UPDATE export_feeds SET {', '.join(assignments)}, updated_at = now() "
                "WHERE id = %(id)s RETURNING *",
                params,
            ).fetchone()
        return Feed.from_row(row) if row else None

    def delete(self, tenant_id: str, feed_id: str) -> bool:
        if not _is_uuid(feed_id):
            return False
        cur = self.execute("DELETE FROM export_feeds WHERE id = %s AND tenant_id = %s", [feed_id, tenant_id])
        return cur.rowcount == 1

    def ask_full_refresh(self, feed_id: str, pending: bool = True) -> None:
        self.execute(
            "UPDATE export_feeds SET full_refresh_pending = %s, updated_at = now() WHERE id = %s",
            [pending, feed_id],
        )

    def due(self, now: datetime, limit: int = 100) -> list[Feed]:
        """Feeds whose next delivery is due, oldest due first."""
        rows = self.execute(
            "SELECT * FROM export_feeds WHERE next_due_at <= %s ORDER BY next_due_at, id LIMIT %s",
            [now, limit],
        ).fetchall()
        return [Feed.from_row(r) for r in rows]

    def scheduled(self, feed_id: str, now: datetime) -> None:
        """A delivery was made for the feed: its next one is due at the next boundary after now."""
        self.execute(
            "UPDATE export_feeds SET next_due_at = "
            "CASE frequency WHEN 'manual' THEN NULL ELSE %s::timestamptz END, updated_at = now() "
            "WHERE id = %s",
            [next_due_or_none(self.get(None, feed_id), now), feed_id],
        )


def _hold_destination(cur: Any, tenant_id: str, destination_id: str | None) -> None:
    """The tenant's live destination a feed is about to name, share-locked until the feed is
    written: a concurrent delete (DestinationStore.delete locks the row for update) either waits and
    then sees this feed, or has committed and this finds no row. InvalidRequest naming the field when
    the id is no destination of this tenant."""
    if destination_id is None:
        return
    if not _is_uuid(destination_id):
        raise InvalidRequest("destination_id", NOT_A_DESTINATION)
    found = cur.execute(
        "SELECT id FROM export_destinations WHERE id = %s AND tenant_id = %s AND deleted_at IS NULL "
        "FOR SHARE",
        [destination_id, tenant_id],
    ).fetchone()
    if found is None:
        raise InvalidRequest("destination_id", NOT_A_DESTINATION)


def next_due_or_none(feed: Feed | None, now: datetime) -> datetime | None:
    return next_due(feed.frequency, now) if feed else None


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def start_delivery(conn: Any, feed: Feed, *, full_refresh: bool = False, now: datetime | None = None) -> Any:
    """Make the feed's next delivery (a pending export_requests row the request sensor launches)
    and move its schedule on; on the lender's connection, in one transaction. A full refresh asked
    while a delivery is still active stays pending for the next one."""
    from export_pipelines.core.requests.feed_deliveries import FeedDeliveries

    now = now or datetime.now(UTC)
    feeds, deliveries = FeedStore.on(conn), FeedDeliveries.on(conn)
    if full_refresh:
        feeds.ask_full_refresh(feed.id)
    with conn.transaction():
        row = deliveries.submit_delivery(
            feed_id=feed.id,
            tenant_id=feed.tenant_id,
            resource=feed.resource,
            format=feed.format,
            compression=feed.compression,
            filters=feed.filters,
            columns=feed.columns,
            webhook_url=feed.webhook_url,
            email=feed.email,
            destination_id=feed.destination_id,
            full_refresh=full_refresh or feed.full_refresh_pending,
        )
        feeds.ask_full_refresh(feed.id, pending=False)
        feeds.scheduled(feed.id, now)
    return row
