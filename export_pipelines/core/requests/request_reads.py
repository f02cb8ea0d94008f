"""A tenant's reads of export_requests (the export API's): one export, a page of them newest first,
and whether the table answers. `tenant_id` None reads every tenant's (an operator key acting for
no tenant); another tenant's row reads exactly like a row that does not exist (docs/api.md).

`RequestStats` is the operators' read: the aggregates the metrics expose (`export-pipelines metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from export_pipelines.core.requests.request_row import StoredRequest, is_request_id
from export_pipelines.core.requests.request_store import RequestRows


class RequestReads(RequestRows):
    """Tenant-scoped reads of export_requests."""

    def one(self, request_id: str, tenant_id: str | None) -> StoredRequest | None:
        if not is_request_id(request_id):
            return None
        return self.fetch_one(
            "SELECT * FROM export_requests WHERE id = %s AND (%s::text IS NULL OR tenant_id = %s)",
            [request_id, tenant_id, tenant_id],
        )

    def page(
        self,
        tenant_id: str | None,
        *,
        status: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
        feed_id: str | None = None,
    ) -> list[StoredRequest]:
        """Up to `limit` rows, newest first, keyset-paginated on (created_at, id) after `after` (the
        last row of the previous page), never by counting rows to skip."""
        return self.fetch_all(
            """
            SELECT * FROM export_requests
            WHERE (%(t)s::text IS NULL OR tenant_id = %(t)s)
              AND (%(s)s::text IS NULL OR status = %(s)s)
              AND (%(f)s::uuid IS NULL OR feed_id = %(f)s::uuid)
              AND (%(c)s::timestamptz IS NULL OR (created_at, id) < (%(c)s, %(i)s::uuid))
            ORDER BY created_at DESC, id DESC
            LIMIT %(n)s
            """,
            {
                "t": tenant_id,
                "s": status,
                "c": after[0] if after else None,
                "i": after[1] if after else None,
                "n": limit,
                "f": feed_id,
            },
        )

    def check_readable(self) -> None:
        """Raises (psycopg.Error) unless the table can be read: the API's readiness check."""
        self.execute("SELECT 1 FROM export_requests LIMIT 1")


# What a histogram measures, per request row, and which rows it measures (operations.md#monitoring).
MEASURES = {
    # How long a succeeded export ran: the first start of its run to the row's success.
    "duration": (
        "extract(epoch FROM completed_at - started_at)",
        "status IN ('succeeded', 'expired') AND started_at IS NOT NULL AND completed_at IS NOT NULL",
    ),
    # What a succeeded export wrote (all its files).
    "bytes": ("bytes_written", "status IN ('succeeded', 'expired')"),
    # How long a request waited for its run to start.
    "wait": ("extract(epoch FROM started_at - created_at)", "started_at IS NOT NULL AND origin = 'request'"),
}


@dataclass(frozen=True)
class StateCount:
    state: str
    enterprise: bool
    requests: int


@dataclass(frozen=True)
class QueueStats:
    """Requests waiting for a run (pending or queued) of one tenant class, and the oldest's wait."""

    enterprise: bool
    depth: int
    oldest_wait_seconds: float


@dataclass(frozen=True)
class HistogramStats:
    """One format's observations: cumulative counts at each bound (le), their count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    total: float


class RequestStats(RequestRows):
    """Aggregates of every tenant's rows. A tenant is of the enterprise class when its id is in
    `enterprise` (the catalog's tenants table says which); the rest are standard."""

    def states(self, enterprise: Sequence[str]) -> list[StateCount]:
        rows = self.execute(
            "SELECT status, tenant_id = ANY(%s) AS enterprise, count(*) AS n FROM export_requests "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            [list(enterprise)],
        ).fetchall()
        return [StateCount(r["status"], bool(r["enterprise"]), int(r["n"])) for r in rows]

    def queue(self, enterprise: Sequence[str]) -> list[QueueStats]:
        """Both classes, a class without waiting requests with depth 0."""
        rows = self.execute(
            """
            SELECT tenant_id = ANY(%s) AS enterprise, count(*) AS n,
                   coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest
            FROM export_requests WHERE status IN ('pending', 'queued') GROUP BY 1
            """,
            [list(enterprise)],
        ).fetchall()
        got = {bool(r["enterprise"]): (int(r["n"]), float(r["oldest"])) for r in rows}
        return [QueueStats(e, *got.get(e, (0, 0.0))) for e in (False, True)]

    def histogram(self, measure: str, bounds: Sequence[float]) -> dict[str, HistogramStats]:
        """The rows' `measure` (a key of MEASURES) per format, counted at each of `bounds` (sorted
        ascending), in one pass: each row is grouped by the first bound it does not exceed
        (width_bucket over the negated bounds counts the bounds >= x), then summed up cumulatively."""
        expression, where = MEASURES[measure]
        negated = sorted(-float(b) for b in bounds)
        rows = self.execute(
            f"""
            SELECT format, %(n)s - width_bucket(-x, %(neg)s::float8[]) AS slot,
                   count(*) AS n, coalesce(sum(x), 0) AS total
            FROM (SELECT format, ({expression})::float8 AS x FROM export_requests WHERE {where}) v
            GROUP BY 1, 2
            """,
            {"n": len(negated), "neg": negated},
        ).fetchall()
        per_slot: dict[str, list[int]] = {}
        totals: dict[str, float] = {}
        for r in rows:
            slots = per_slot.setdefault(r["format"], [0] * (len(bounds) + 1))
            slots[int(r["slot"])] += int(r["n"])  # slot len(bounds): above every bound (+Inf only)
            totals[r["format"]] = totals.get(r["format"], 0.0) + float(r["total"])
        result: dict[str, HistogramStats] = {}
        for fmt, slots in per_slot.items():
            cumulative, running = [], 0
            for bound, n in zip(bounds, slots, strict=False):
                running += n
                cumulative.append((float(bound), running))
            result[fmt] = HistogramStats(tuple(cumulative), sum(slots), totals[fmt])
        return result
