"""The fair queue of export_requests: which rows to start now (round robin across tenants, at most
so many starts per tenant and minute), claiming a row for exactly one door, the rows the reaper and
the cancel sensor look at, and where a waiting row stands (docs/requests.md)."""

from __future__ import annotations

from psycopg import sql

from export_pipelines.core.requests.catalog import TenantsSpec
from export_pipelines.core.requests.request_row import OversizedFilters, StoredRequest, is_request_id
from export_pipelines.core.requests.request_store import RequestRows, as_request
from export_pipelines.core.storage.migrations.request_table import MAX_FILTERS_BYTES

DEFAULT_STARTS_PER_MINUTE = 10

# The queue position of a waiting row, as the fair queue launches: round robin across tenants in
# creation order. If the row is its tenant's k-th waiting row, the rows ahead are its tenant's k-1
# earlier ones, plus from every other tenant t its first min(n_t, k-1) rows, plus t's k-th row when
# that was created earlier (that is, when t has at least k rows created before this one). One
# hash aggregate over the waiting rows, no sort (QUEUE_POSITION_REFERENCE_SQL, a window function
# that ranks every row, is the definition the tests compare it with).
QUEUE_POSITION_SQL = """
WITH me AS (SELECT tenant_id, created_at, id FROM export_requests WHERE id = %(id)s),
per AS (
    SELECT r.tenant_id,
           count(*) AS n,
           count(*) FILTER (WHERE (r.created_at, r.id) < (me.created_at, me.id)) AS before
    FROM export_requests r, me
    WHERE r.status IN ('pending', 'queued')
    GROUP BY r.tenant_id
), mine AS (SELECT per.before + 1 AS k FROM per, me WHERE per.tenant_id = me.tenant_id)
SELECT coalesce(sum(CASE WHEN per.tenant_id = me.tenant_id THEN per.before
                         ELSE least(per.n, mine.k - 1) + (per.before >= mine.k)::int END), 0)::bigint AS ahead
FROM per, me, mine
"""
QUEUE_POSITION_REFERENCE_SQL = """
WITH waiting AS (
    SELECT id, created_at,
           row_number() OVER (PARTITION BY tenant_id ORDER BY created_at, id) AS rank
    FROM export_requests WHERE status IN ('pending', 'queued')
), me AS (SELECT rank, created_at, id FROM waiting WHERE id = %(id)s)
SELECT count(*) AS ahead FROM waiting, me
WHERE waiting.id <> me.id
  AND (waiting.rank < me.rank
       OR (waiting.rank = me.rank AND (waiting.created_at, waiting.id) < (me.created_at, me.id)))
"""


# Every waiting row's position at once (the same order as QUEUE_POSITION_REFERENCE_SQL): the API
# reads this at most once a second and answers each status GET from it, so a GET does not aggregate
# every waiting row.
QUEUE_POSITIONS_SQL = """
WITH waiting AS (
    SELECT id, created_at,
           row_number() OVER (PARTITION BY tenant_id ORDER BY created_at, id) AS rank
    FROM export_requests WHERE status IN ('pending', 'queued')
)
SELECT id::text AS id, row_number() OVER (ORDER BY rank, created_at, id) - 1 AS ahead FROM waiting
"""


class RequestQueue(RequestRows):
    """The fair queue's reads and claims on export_requests."""

    def to_launch(
        self,
        limit: int = 50,
        requeue_after_seconds: int = 120,
        starts_per_minute: int = DEFAULT_STARTS_PER_MINUTE,
        *,
        pending_only: bool = False,
        tenants: TenantsSpec | None = None,
    ) -> list[StoredRequest]:
        """Pending rows, plus queued rows whose run never started (a tick that died after
        marking them; re-requesting those is safe because run keys are deduplicated), unless
        `pending_only` (filtered before the limit, so a backlog of such rows cannot fill it).

        Fair across tenants: rows are taken round-robin, every tenant's oldest row first, then
        every tenant's second, so one tenant's backlog never delays another tenant's first request
        beyond this tick. Pending rows come before re-requests of queued ones, and, with `tenants`
        (the catalog's tenants table), rows of listed tenants before rows of tenant ids it does not
        list (returned last, for the caller to fail): a flood of stale or made-up rows cannot take
        the first turns. At most `starts_per_minute` rows per tenant are started (queued) per
        minute: the rest wait, in the same order. A `filters` value over MAX_FILTERS_BYTES is not
        read: it comes back as OversizedFilters (the sensor fails the row)."""
        columns = ", ".join(f"r.{c}" for c in StoredRequest.__dataclass_fields__ if c != "filters")
        known = sql.SQL("true")
        if tenants is not None:
            known = sql.SQL("EXISTS (SELECT 1 FROM {table} t WHERE t.{key}::text = c.tenant_id)").format(
                table=sql.Identifier(tenants.table.schema, tenants.table.name),
                key=sql.Identifier(tenants.key),
            )
        query = sql.SQL(
            f"""
                WITH candidates AS (
                    SELECT id, tenant_id, created_at, status = 'queued' AS requeue,
                           row_number() OVER (PARTITION BY tenant_id
                                              ORDER BY status = 'queued', created_at, id) AS turn
                    FROM export_requests
                    WHERE status = 'pending'
                       OR (NOT %(pending_only)s AND status = 'queued' AND run_id IS NULL
                           AND queued_at < now() - make_interval(secs => %(requeue)s))
                ), started AS (
                    SELECT tenant_id, count(*) AS n FROM export_requests
                    WHERE queued_at >= now() - interval '1 minute'
                      AND tenant_id IN (SELECT tenant_id FROM candidates)
                    GROUP BY tenant_id
                )
                SELECT {columns}, octet_length(r.filters::text) AS filters_bytes,
                       CASE WHEN octet_length(r.filters::text) <= %(max_filters)s
                            THEN r.filters END AS filters
                FROM candidates c
                JOIN export_requests r ON r.id = c.id
                LEFT JOIN started s ON s.tenant_id = c.tenant_id
                WHERE c.turn <= %(per_minute)s - coalesce(s.n, 0)
                ORDER BY NOT {{known}}, c.requeue, c.turn, c.created_at, c.id
                LIMIT %(limit)s
                """
        ).format(known=known)
        rows = self.execute(
            query,
            {
                "requeue": requeue_after_seconds,
                "max_filters": MAX_FILTERS_BYTES,
                "per_minute": starts_per_minute,
                "limit": limit,
                "pending_only": pending_only,
            },
        ).fetchall()
        out = []
        for r in rows:
            if r["filters"] is None and r["filters_bytes"] is not None:
                r = {**r, "filters": OversizedFilters(r["filters_bytes"])}
            out.append(as_request(r))
        return out

    def claim(self, row: StoredRequest) -> bool:
        """Mark a row `to_launch` returned as queued, only if nobody else did since it was read
        (same status, same queued_at): the request sensor and the request submitter may read the
        same pending row at once, and only the one that claims it may start its run."""
        cur = self.execute(
            """
                UPDATE export_requests SET status = 'queued', queued_at = now(), error = NULL,
                       error_code = NULL, updated_at = now()
                WHERE id = %s AND attempt = %s AND status = %s
                  AND queued_at IS NOT DISTINCT FROM %s
                """,
            [row.id, row.attempt, row.status, row.queued_at],
        )
        return cur.rowcount == 1

    def unfinished(self, limit: int = 200, older_than_seconds: int = 0) -> list[StoredRequest]:
        """Queued and running rows not touched for `older_than_seconds`, oldest first: what the
        reaper checks against the runs Dagster still has."""
        rows = self.execute(
            """
                SELECT * FROM export_requests
                WHERE status IN ('queued', 'running')
                  AND updated_at < now() - make_interval(secs => %s)
                ORDER BY updated_at, id
                LIMIT %s
                """,
            [older_than_seconds, limit],
        ).fetchall()
        return [as_request(r) for r in rows]

    def positions(self) -> dict[str, int]:
        """Every waiting row's queue position, by id."""
        return {r["id"]: int(r["ahead"]) for r in self.execute(QUEUE_POSITIONS_SQL).fetchall()}

    def position(self, request_id: str) -> int | None:
        """How many waiting rows the fair queue starts before this one (None: it names no row)."""
        if not is_request_id(request_id):
            return None
        got = self.execute(QUEUE_POSITION_SQL, {"id": request_id}).fetchone()
        return int(got["ahead"]) if got else None
