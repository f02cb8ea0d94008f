"""Hygiene: expire old exports (delete their objects) and abort abandoned multipart uploads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from export_pipelines.core.checkpoints import CheckpointStore
from export_pipelines.core.request_store import RequestStore
from export_pipelines.core.s3 import abort_uploads, delete_prefix


@dataclass(frozen=True)
class JanitorReport:
    expired_requests: int
    deleted_objects: int
    aborted_uploads: int
    pruned_checkpoints: int = 0


# An export untouched this long will not be resumed: its uploads were aborted long before.
FORGET_CHECKPOINTS_AFTER = timedelta(days=7)


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
        if req.manifest_key:
            deleted += delete_prefix(client, bucket, req.manifest_key.rsplit("/", 1)[0] + "/")
        if store.mark_expired(req.id):
            expired += 1
    aborted = abort_uploads(
        client, bucket, prefix.strip("/") + "/", initiated_before=datetime.now(UTC) - abort_uploads_older_than
    )
    pruned = checkpoints.prune(FORGET_CHECKPOINTS_AFTER) if checkpoints is not None else 0
    return JanitorReport(expired, deleted, aborted, pruned)
