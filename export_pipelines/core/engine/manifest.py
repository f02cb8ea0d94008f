"""Finishing an export: manifest.json, stale-object cleanup, _SUCCESS, presigned links.

Order matters: the manifest is written after every file is complete, stale objects (from an
earlier attempt that made more files) are deleted, and `_SUCCESS` is written last — so its
presence means the folder holds exactly the files the manifest names, all complete.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.encoders.type_contract import describe
from export_pipelines.core.engine.encoders.xlsx import sheet_layout
from export_pipelines.core.engine.plan import ExportPlan, schema_hash, schema_of
from export_pipelines.core.engine.signing import ALG, ManifestSigner
from export_pipelines.core.formats import format_spec
from export_pipelines.core.results import ExportOutcome, FileLink, FileResult, FinalizedExport
from export_pipelines.core.storage.layout import (
    MANIFEST_NAME,
    SIGNATURE_SUFFIX,
    ExportLocation,
    download_name,
    file_extension,
)
from export_pipelines.core.storage.links import link_expiry, presign_link
from export_pipelines.core.storage.s3 import abort_uploads, delete_prefix, explain

MANIFEST_VERSION = 1


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _file_entry(fmt: str, f: FileResult) -> dict[str, Any]:
    entry = {
        "key": f.key,
        "rows": f.rows,
        "bytes": f.bytes,
        "sha256": f.sha256,
        "first_key": _json_value(f.first_key),
        "last_key": _json_value(f.last_key),
        "parts": f.parts,
        "snapshot": f.snapshot,
    }
    if f.resumed_at_part:
        entry["resumed_at_part"] = f.resumed_at_part
    # Per column, how many values fell under each key of its columns[].special_values rule.
    entry["special_values"] = f.special_values
    if f.special_values_recounted:
        entry["special_values_recounted"] = (
            "rows written by an earlier attempt were counted again when this attempt finished"
        )
    if fmt == "xlsx":
        # Excel holds 1,048,576 rows a sheet: the rows continue on the next sheet.
        entry["sheets"] = sheet_layout(f.rows)
    return entry


def delivery_snapshot(outcome: ExportOutcome) -> str:
    """The one snapshot a feed delivery was read in (its single file's)."""
    return outcome.files[0].snapshot if outcome.files else ""


def feed_sections(plan: ExportPlan, outcome: ExportOutcome) -> dict[str, Any]:
    """A feed delivery's `changes` and `schema` (docs/feeds.md)."""
    feed = plan.request.feed
    assert feed is not None
    deletes = sum(f.deletes for f in outcome.files)
    schema = schema_of(plan.request, plan.types)
    return {
        "feed_id": feed.feed_id,
        "sequence": feed.sequence,
        "changes": {
            "mode": feed.mode,
            "reason": feed.reason or None,
            "previous_snapshot": feed.previous_snapshot if feed.mode == "incremental" else None,
            "snapshot": delivery_snapshot(outcome),
            "upserts": outcome.rows - deletes,
            "deletes": deletes,
            "previous_manifest": feed.previous_manifest,
            "primary_key": list(plan_primary_key(plan)),
        },
        "schema": [{"name": name, "type": pg_type} for name, pg_type in schema],
        "schema_hash": schema_hash(schema),
    }


def plan_primary_key(plan: ExportPlan) -> tuple[str, ...]:
    cols = plan.request.columns
    return tuple(c for c in cols if c in (plan.key_column, *plan.primary_key))


def _snapshots(outcome: ExportOutcome) -> str | list[str] | None:
    """The snapshot(s) the files were read at: one when the export was read in one."""
    seen = list(dict.fromkeys(f.snapshot for f in outcome.files if f.snapshot))
    if not seen:
        return None
    return seen[0] if len(seen) == 1 else seen


def build_manifest(
    plan: ExportPlan, outcome: ExportOutcome, signer: ManifestSigner | None = None
) -> dict[str, Any]:
    req = plan.request
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "export_id": req.export_id,
        "tenant_id": req.tenant_id,
        "resource": req.resource,
        "format": req.format,
        "compression": req.compression,
        "filters": req.filters_for_manifest(),
        "columns": [
            {
                "name": c.name,
                "postgres_type": c.pg_type,
                "output_type": outcome.output_types.get(c.name, "text"),
                # The type contract (docs/formats.md) for this column in this format, including what is
                # written for values the format cannot hold as they are.
                **describe(c, req.format),
            }
            for c in plan.columns
        ],
        "key_column": plan.key_column,
        "high_water_mark": _json_value(plan.high_water_mark),
        "consistency": (
            "each file is read in one REPEATABLE READ snapshot (files[].snapshot; a file continued "
            "after a crash names both); rows with "
            f"{plan.key_column} above high_water_mark, fixed when the export was planned, are excluded"
        ),
        "resumable_at": format_spec(req.format).resumable_at,
        "rows_total": outcome.rows,
        "bytes_total": outcome.bytes,
        "created_at": datetime.now(UTC).isoformat(),
        "snapshot": _snapshots(outcome),
        "files": [_file_entry(req.format, f) for f in outcome.files],
    }
    if req.feed is not None:
        manifest["consistency"] = (
            "one REPEATABLE READ snapshot (changes.snapshot) for the whole delivery; incremental: every "
            "key written or deleted by a transaction not visible in changes.previous_snapshot and "
            "visible in changes.snapshot, once, as its state in changes.snapshot"
        )
        manifest.update(feed_sections(plan, outcome))
    if signer is not None:
        # Inside the signed bytes, so the key a delivery names cannot be swapped.
        manifest["signature"] = {
            "alg": ALG,
            "kid": signer.kid,
            "file": MANIFEST_NAME + SIGNATURE_SUFFIX,
        }
    return manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The exact bytes written (and signed): what the signature covers."""
    return json.dumps(manifest, indent=2, ensure_ascii=False).encode()


def clear_success_marker(client: Any, bucket: str, location: ExportLocation) -> None:
    """Called before an export (re)writes its files: `_SUCCESS` must never sit beside stale ones."""
    try:
        client.delete_object(Bucket=bucket, Key=location.success_key)
    except ClientError as exc:
        raise explain(exc, bucket, location.success_key) from exc


def finalize_export(
    client: Any,
    bucket: str,
    plan: ExportPlan,
    outcome: ExportOutcome,
    checkpoints: CheckpointStore | None = None,
    *,
    signer: ManifestSigner | None = None,
    links: bool = True,
) -> FinalizedExport:
    """Manifest (and its signature), stale-object cleanup, _SUCCESS; then the checkpoint is done with."""
    loc = plan.location
    body = manifest_bytes(build_manifest(plan, outcome, signer))
    signature_key = loc.manifest_key + SIGNATURE_SUFFIX
    put = {"Bucket": bucket, "ServerSideEncryption": "AES256"}
    try:
        client.put_object(Key=loc.manifest_key, Body=body, ContentType="application/json", **put)
        if signer is not None:
            client.put_object(Key=signature_key, Body=signer.sign(body), ContentType="text/plain", **put)
        # Stale objects: files of an earlier attempt that made more of them.
        keep = frozenset(
            {f.key for f in outcome.files}
            | {loc.manifest_key, loc.success_key}
            | ({signature_key} if signer is not None else set())
        )
        delete_prefix(client, bucket, loc.folder, keep)
        # No upload may stay open beside a complete export (e.g. a superseded attempt's).
        abort_uploads(client, bucket, loc.folder)
        client.put_object(Key=loc.success_key, Body=b"", **put)
    except ClientError as exc:
        raise explain(exc, bucket, loc.folder) from exc
    if checkpoints is not None:
        checkpoints.forget(loc.folder)
    if not links:  # a tenant's own bucket: the files stay there, named by their s3:// URLs
        return delivered_in_place(f"s3://{bucket}/", loc.manifest_key, outcome)

    # The links live no longer than the signing credentials allow (core/storage/links.py); the promised
    # expiry is the one the links really have.
    expiry = link_expiry(client, timedelta(hours=plan.request.link_expiry_hours))
    links = []
    signed = []
    for number, f in enumerate(outcome.files, start=1):
        filename = download_name(loc, number, file_extension(f.key))
        link = presign_link(client, bucket, f.key, filename, expiry)
        signed.append(link)
        links.append(FileLink(f.key, link.url, f.rows, f.bytes))
    manifest_link = presign_link(client, bucket, loc.manifest_key, "manifest.json", expiry)
    signed.append(manifest_link)
    manifest_url = manifest_link.url
    expires_at = min(link.expires_at for link in signed)
    return FinalizedExport(
        manifest_key=loc.manifest_key,
        manifest_url=manifest_url,
        files=links,
        expires_at=expires_at,
        rows=outcome.rows,
        bytes=outcome.bytes,
    )


# A delivery into a tenant's own storage has no link to expire; its row keeps this date.
DELIVERED_EXPIRES_AT = datetime(9999, 12, 31, tzinfo=UTC)


def delivered_in_place(base: str, manifest_key: str, outcome: ExportOutcome) -> FinalizedExport:
    """The result of an export delivered into a destination: where each file now lies."""
    return FinalizedExport(
        manifest_key=manifest_key,
        manifest_url=base + manifest_key,
        files=[FileLink(f.key, base + f.key, f.rows, f.bytes) for f in outcome.files],
        expires_at=DELIVERED_EXPIRES_AT,
        rows=outcome.rows,
        bytes=outcome.bytes,
    )
