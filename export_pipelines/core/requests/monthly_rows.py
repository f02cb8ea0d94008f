"""The request rows of monthly partitions (origin 'monthly', export_id YYYY-MM): written by the
monthly export's runs, one row per (tenant, resource, month). The other writes of export_requests are
request_store.py's."""

from __future__ import annotations

import json
from typing import Any

from export_pipelines.core.requests.request_row import monthly_request_id
from export_pipelines.core.requests.request_store import RequestRows


class MonthlyRows(RequestRows):
    def upsert(
        self,
        *,
        tenant_id: str,
        resource: str,
        month: str,
        format: str,
        compression: str | None,
        filters: dict[str, Any],
        columns: list[str] | None,
        run_id: str,
    ) -> str:
        """The request row of a monthly partition (origin 'monthly', export_id YYYY-MM), created by
        its first run and taken over by every re-run (UI re-execution, backfill): one row per
        (tenant, resource, month). A re-run of a finished row counts as a new attempt. The tenant's
        cap neither refuses nor counts these rows (the trigger skips origin 'monthly')."""
        request_id = monthly_request_id(tenant_id, resource, month)
        self.execute(
            """
                INSERT INTO export_requests (id, tenant_id, resource, format, compression, filters,
                                             columns, status, run_id, origin, export_id,
                                             queued_at, started_at)
                VALUES (%(id)s, %(tenant)s, %(resource)s, %(format)s, %(compression)s,
                        %(filters)s::jsonb, %(columns)s, 'running', %(run_id)s, 'monthly',
                        %(month)s, now(), now())
                ON CONFLICT (id) DO UPDATE SET
                    format = excluded.format, compression = excluded.compression,
                    filters = excluded.filters, columns = excluded.columns,
                    attempt = export_requests.attempt
                        + CASE WHEN export_requests.status IN ('pending', 'queued', 'running')
                               THEN 0 ELSE 1 END,
                    status = 'running', run_id = excluded.run_id, error = NULL, error_code = NULL,
                    rows_exported = 0, bytes_written = 0, manifest_key = NULL,
                    download_url = NULL, expires_at = NULL, completed_at = NULL,
                    cancel_requested_at = NULL, started_at = now(), updated_at = now()
                """,
            {
                "id": request_id,
                "tenant": tenant_id,
                "resource": resource,
                "format": format,
                "compression": compression,
                "filters": json.dumps(filters),
                "columns": columns,
                "run_id": run_id,
                "month": month,
            },
        )
        return request_id
