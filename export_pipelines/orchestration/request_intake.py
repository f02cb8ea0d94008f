"""Pending export_requests rows → run requests: the rules the request sensor and the request
submitter share (validation, fairness, claiming), so both doors start exactly the same runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from export_pipelines.core.errors import ExportError
from export_pipelines.core.requests.request_row import StoredRequest, check_request_fields
from export_pipelines.core.requests.tenants import existing_tenants, unknown_tenant
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.resources import ExportSettings, Notifier, SourceDatabase
from export_pipelines.orchestration.run_config import export_run_config

# The sensor that owns request runs. The submitter creates its runs under this sensor's name and
# run key, so the sensor's run-key check sees them and never starts a second run of a row.
REQUEST_SENSOR_NAME = "export_request_sensor"


@dataclass(frozen=True)
class ClaimedRequest:
    """A row now `queued`, and the run that must be started for it."""

    row: StoredRequest
    run_config: dict[str, Any]
    tags: dict[str, str]

    @property
    def run_key(self) -> str:
        return self.row.run_key


def request_run_config(row: StoredRequest) -> dict[str, Any]:
    return export_run_config(
        tenant_id=row.tenant_id,
        resource=row.resource,
        format=row.format,
        compression=row.compression or None,
        columns=row.columns or None,
        filters=row.filters or {},
        request_id=row.id,
        webhook_url=row.webhook_url,
        email=row.email,
        max_rows_per_file=row.max_rows_per_file,
        link_expiry_hours=row.link_expiry_hours,
        destination_id=str(row.destination_id) if row.destination_id else None,
    )


def validate_row(row: StoredRequest, settings: ExportSettings, notifier: Notifier) -> None:
    """Everything that can be checked without the database; raises with a reason a person can act on."""
    check_request_fields(
        settings.catalog(),
        notifier.allowlist(),
        tenant_id=row.tenant_id,
        resource=row.resource,
        format=row.format,
        compression=row.compression,
        columns=row.columns,
        filters=row.filters,
        webhook_url=row.webhook_url,
        email=row.email,
        export_id=row.id,
        allow_private=notifier.allow_private,  # the send-time rules, so the row says why now
    )


def claim_pending_requests(
    source: SourceDatabase,
    export_settings: ExportSettings,
    notifier: Notifier,
    log: logging.Logger | Any,
    *,
    pending_only: bool = False,
) -> list[ClaimedRequest]:
    """Rows to start now, fair across tenants and at most EXPORT_TENANT_STARTS_PER_MINUTE per
    tenant (RequestQueue.to_launch), each claimed (pending/queued → queued) before it is returned:
    a row another door claimed first is skipped. A row that is invalid, or names no tenant, is
    failed now (invalid_request) and never picked again. `pending_only` leaves queued rows whose
    run never started to the sensor, whose run-key check makes re-requesting them safe."""
    store, queue = source.requests(), source.queue()
    catalog = export_settings.catalog()
    # Filtered and ordered in the query, before its limit: rows of listed tenants first, pending
    # before re-requests, so stale or made-up rows never fill the batch.
    rows = queue.to_launch(
        starts_per_minute=export_settings.tenant_starts_per_minute,
        pending_only=pending_only,
        tenants=catalog.tenants,
    )
    if not rows:
        return []
    try:
        known = existing_tenants(source.conninfo, catalog, [r.tenant_id for r in rows])
    except Exception as exc:  # noqa: BLE001 - unknown: let count_rows check each run instead
        log.warning(f"could not read the tenants table: {type(exc).__name__}: {exc}")
        known = None
    claimed: list[ClaimedRequest] = []
    for row in rows:
        try:
            validate_row(row, export_settings, notifier)
            if known is not None and row.tenant_id not in known:
                raise unknown_tenant(catalog, row.tenant_id)
        except ExportError as exc:
            store.mark_invalid(row.id, row.attempt, str(exc)[:500])
            log.info(f"request {row.id} rejected: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - one bad row must never stop the others
            store.mark_invalid(row.id, row.attempt, f"invalid request: {type(exc).__name__}: {exc}"[:500])
            continue
        if not queue.claim(row):
            continue  # the other door took it (or the tenant canceled it) since it was read
        run_tags = {tags.TENANT: row.tenant_id, tags.REQUEST_ID: row.id, tags.ATTEMPT: str(row.attempt)}
        claimed.append(ClaimedRequest(row, request_run_config(row), run_tags))
    return claimed
