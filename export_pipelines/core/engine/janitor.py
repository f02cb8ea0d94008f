"""Hygiene: expire old exports (delete their objects), abort abandoned multipart uploads, forget old
checkpoints, and delete Dagster's old step outputs and compute logs from the bucket."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.errors import Rejected
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.storage.s3 import DELETE_BATCH, abort_uploads, delete_export

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JanitorReport:
    expired_requests: int
    deleted_objects: int
    aborted_uploads: int
    pruned_checkpoints: int = 0
    deleted_run_objects: int = 0


# An export untouched this long will not be resumed: its uploads were aborted long before.
FORGET_CHECKPOINTS_AFTER = timedelta(days=7)
# Dagster's own objects under {EXPORT_PREFIX}/_dagster/ (EXPORT_IO_MANAGER=s3 step outputs, the
# Celery variant's compute logs): needed by a run's retries and re-executions, then never read.
# Kept as long as checkpoints, the horizon after which nothing resumes.
DELETE_RUN_OBJECTS_AFTER = FORGET_CHECKPOINTS_AFTER
RUN_OBJECTS_FOLDER = "_dagster"


def delete_old_run_objects(client: Any, bucket: str, prefix: str, older_than: datetime) -> int:
    """Delete the objects under `{prefix}/_dagster/` last written before `older_than`; how many.
    Exports (`{prefix}/tenant=…/`) are never listed here, so never touched."""
    folder = f"{prefix.strip('/')}/{RUN_OBJECTS_FOLDER}/"
    old = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder)
        for obj in page.get("Contents", [])
        if obj["LastModified"] < older_than
    ]
    for start in range(0, len(old), DELETE_BATCH):
        batch = old[start : start + DELETE_BATCH]
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
    return len(old)


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
            location = req.location(prefix)  # never a column such as manifest_key
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
    run_objects = delete_old_run_objects(client, bucket, prefix, datetime.now(UTC) - DELETE_RUN_OBJECTS_AFTER)
    return JanitorReport(expired, deleted, aborted, pruned, run_objects)
