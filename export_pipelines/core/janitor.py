"""Hygiene: expire old exports (delete their objects) and abort abandoned multipart uploads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from export_pipelines.core.checkpoints import CheckpointStore
from export_pipelines.core.request_store import RequestStore
from export_pipelines.core.s3 import abort_uploads


@dataclass(frozen=True)
class JanitorReport:
    expired_requests: int
    deleted_objects: int
    aborted_uploads: int
    pruned_checkpoints: int = 0


def delete_folder(client: Any, bucket: str, folder: str) -> int:
    """Delete every object under `folder` (which ends with '/'); returns how many."""
    if not folder.endswith("/"):
        raise ValueError("folder must end with '/' so it cannot match a sibling prefix")
    deleted = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted


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
            deleted += delete_folder(client, bucket, req.manifest_key.rsplit("/", 1)[0] + "/")
        if store.mark_expired(req.id):
            expired += 1
    aborted = abort_uploads(
        client, bucket, prefix.strip("/") + "/", initiated_before=datetime.now(UTC) - abort_uploads_older_than
    )
    pruned = checkpoints.prune(FORGET_CHECKPOINTS_AFTER) if checkpoints is not None else 0
    return JanitorReport(expired, deleted, aborted, pruned)
