"""Hygiene: expire old exports (delete their objects) and abort abandoned multipart uploads."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from export_pipelines.core.checkpoints import CheckpointStore
from export_pipelines.core.errors import Rejected
from export_pipelines.core.layout import ExportLocation
from export_pipelines.core.request_row import StoredRequest
from export_pipelines.core.request_store import RequestStore
from export_pipelines.core.s3 import abort_uploads, delete_export

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JanitorReport:
    expired_requests: int
    deleted_objects: int
    aborted_uploads: int
    pruned_checkpoints: int = 0


# An export untouched this long will not be resumed: its uploads were aborted long before.
FORGET_CHECKPOINTS_AFTER = timedelta(days=7)


def request_location(prefix: str, req: StoredRequest) -> ExportLocation:
    """The folder a request's export was written to: (prefix, tenant, resource, export id), the
    export id being the row's id, or a monthly row's month (StoredRequest.folder_export_id).

    Never a column such as `manifest_key`: apps can write rows, and a row naming another folder
    must not make the service delete or sign it. Rejected when the row cannot name a folder
    (a resource no export could have been written under)."""
    return ExportLocation(prefix, req.tenant_id, req.resource, req.folder_export_id)


def run_janitor(
    store: RequestStore,
    client: Any,
    bucket: str,
    prefix: str,
    abort_uploads_older_than: timedelta,
    checkpoints: CheckpointStore | None = None,
) -> JanitorReport:
    expired = deleted = 0
    for req in store.expired():
        try:
            location = request_location(prefix, req)
        except Rejected as exc:
            # No export was ever written for such a row (the request checks refuse the resource):
            # there is nothing of its own to delete, and nothing else may be.
            log.warning("expired request %s names no export folder (%s); nothing deleted", req.id, exc)
        else:
            deleted += delete_export(client, bucket, location)
        if store.mark_expired(req.id):
            expired += 1
    aborted = abort_uploads(
        client, bucket, prefix.strip("/") + "/", initiated_before=datetime.now(UTC) - abort_uploads_older_than
    )
    pruned = checkpoints.prune(FORGET_CHECKPOINTS_AFTER) if checkpoints is not None else 0
    return JanitorReport(expired, deleted, aborted, pruned)
