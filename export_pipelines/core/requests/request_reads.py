"""A tenant's reads of export_requests (the export API's): one export, a page of them newest first,
and whether the table answers. `tenant_id` None reads every tenant's (an operator key acting for
no tenant); another tenant's row reads exactly like a row that does not exist (docs/api.md)."""

from __future__ import annotations

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
