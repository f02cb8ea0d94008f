"""Planning an export: validate against the live schema, fix the cut (row count and high-water
mark) in one snapshot, and fingerprint what decides the bytes so a retry reuses only its own cut."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from export_pipelines.core.catalog import Catalog
from export_pipelines.core.checkpoints import CheckpointStore, Cut
from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.layout import ExportLocation
from export_pipelines.core.query import ExportQuery, connect, introspect_columns
from export_pipelines.core.request import ExportRequest

CHECKPOINT_VERSION = 1  # bump when an encoder's bytes change: old checkpoints are then not reused


@dataclass(frozen=True)
class ExportPlan:
    """What plan_export decided: the validated request, column types, the cut, the place."""

    request: ExportRequest
    types: dict[str, ColumnInfo]  # every catalog column of the resource
    rows_total: int
    high_water_mark: Any  # max key at plan time: rows with a larger key are out
    location: ExportLocation
    key_column: str
    fingerprint: str = ""  # what shapes the bytes: a checkpoint is reused only for the same one
    resumed: bool = False  # the cut (and maybe files) came from an earlier attempt's checkpoint

    @property
    def columns(self) -> list[ColumnInfo]:
        """The exported columns, in output order."""
        return [self.types[c] for c in self.request.columns]

    @property
    def key_type(self) -> str:
        return self.types[self.key_column].pg_type


def request_fingerprint(request: ExportRequest, key_column: str, types: dict[str, ColumnInfo]) -> str:
    """A digest of everything that decides an export's bytes (not its id or link expiry)."""
    fields = {k: v for k, v in asdict(request).items() if k not in ("export_id", "link_expiry_hours")}
    shape = {
        "version": CHECKPOINT_VERSION,
        "request": fields,
        "key": key_column,
        "types": [types[c].pg_type for c in request.columns],
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()


def plan_export(
    conninfo: str,
    catalog: Catalog,
    request: ExportRequest,
    prefix: str,
    checkpoints: CheckpointStore | None = None,
    *,
    statement_timeout_seconds: float | None = None,
) -> ExportPlan:
    """Count the rows (progress denominator) and fix the high-water mark, in one snapshot.

    With a checkpoint store, a retry of the same export reuses the cut its first attempt fixed,
    so rows inserted between a crash and the resume stay out, as they would have.
    """
    spec = catalog.resource(request.resource)
    location = ExportLocation(prefix, request.tenant_id, request.resource, request.export_id)
    with (
        connect(conninfo, statement_timeout_seconds=statement_timeout_seconds) as conn,
        conn.transaction(),
    ):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        types = introspect_columns(conn, spec)
        fingerprint = request_fingerprint(request, spec.key, types)
        cut = checkpoints.cut(location.folder, types[spec.key].pg_type) if checkpoints else None
        resumed = cut is not None and cut.fingerprint == fingerprint
        if not resumed:
            query = ExportQuery(spec, request, types)
            stmt, params = query.count_and_high_water_mark()
            row = conn.execute(stmt, params).fetchone()
            rows_total, hwm = (int(row[0]), row[1]) if row else (0, None)
            cut = Cut(fingerprint, rows_total, hwm)
    assert cut is not None
    if checkpoints and not resumed:
        checkpoints.save_cut(location.folder, cut)
    if checkpoints:
        checkpoints.claim(location.folder)
    return ExportPlan(
        request=request,
        types=types,
        rows_total=cut.rows_total,
        high_water_mark=cut.high_water_mark,
        location=location,
        key_column=spec.key,
        fingerprint=fingerprint,
        resumed=resumed,
    )
