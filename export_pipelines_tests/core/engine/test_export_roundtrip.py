"""The core against the real PostgreSQL and S3 server: the bytes in S3 are the rows in PostgreSQL."""

from __future__ import annotations

import gzip
import io
import json
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

import openpyxl
import pytest

from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.storage.s3 import make_s3_client, open_uploads
from export_pipelines_tests.support.readback import csv_rows, get_bytes, parquet_table, read_manifest

BIG = "t-big"
TEXT_COLUMNS = [
    "id",
    "tenant_id",
    "created_at",
    "status",
    "amount",
    "currency",
    "customer_email",
    "note",
    "attrs",
]


def export(catalog, source_url, client, bucket, prefix, *, part_size=8 << 20, **kwargs: Any):
    request = build_request(catalog, resource="orders", export_id="x1", **kwargs)
    plan = plan_export(source_url, catalog, request, prefix)
    clear_success_marker(client, bucket, plan.location)
    progress = []
    outcome = run_export(
        plan,
        conninfo=source_url,
        catalog=catalog,
        s3_client=client,
        bucket=bucket,
        part_size=part_size,
        on_progress=progress.append,
    )
    done = finalize_export(client, bucket, plan, outcome)
    return plan, outcome, done, read_manifest(client, bucket, done.manifest_key), progress


def expected_text(pg, where: str, params: list[Any], columns: list[str] = TEXT_COLUMNS) -> list[tuple]:
    """PostgreSQL's own text rendering of each value (what CSV must carry), NULL as None."""
    cols = ", ".join(f"{c}::text" for c in columns)
    return [
        tuple(r) for r in pg.execute(f"SELECT {cols} FROM orders WHERE {where} ORDER BY orders.id", params)
    ]


def test_csv_roundtrip_big_tenant_value_for_value(catalog, source_url, s3_client, bucket, prefix, pg):
    # No compression: ~30 MB, so the file spans several 5 MiB parts.
    plan, outcome, _done, manifest, progress = export(
        catalog, source_url, s3_client, bucket, prefix, tenant_id=BIG, compression="none", part_size=5 << 20
    )
    expected = expected_text(pg, "tenant_id = %s", [BIG])
    assert len(expected) >= 100_000
    header, rows = csv_rows(s3_client, bucket, manifest)
    assert header == TEXT_COLUMNS
    assert rows == expected  # every value, in key order, NULL distinct from ""
    assert {r[1] for r in rows} == {BIG}  # no other tenant's rows
    assert any(r[6] == "" for r in rows) and any(r[6] is None for r in rows)
    assert any("\n" in (r[7] or "") for r in rows) and any("\r" in (r[7] or "") for r in rows)
    assert plan.rows_total == outcome.rows == manifest["rows_total"] == len(expected)
    assert manifest["files"][0]["parts"] >= 3
    assert [p.parts_uploaded for p in progress] == list(range(1, manifest["files"][0]["parts"] + 1))
    assert progress[-1].rows_exported == len(expected)
    assert open_uploads(s3_client, bucket, prefix) == []


def test_csv_gzip_matches_psql_copy_bytes(catalog, source_url, s3_client, bucket, prefix, pg):
    _, _, _, manifest, _ = export(catalog, source_url, s3_client, bucket, prefix, tenant_id="t-001")
    from export_pipelines_tests.support.readback import csv_text

    (text,) = csv_text(s3_client, bucket, manifest)
    cur = pg.cursor()
    copied = bytearray()
    with cur.copy(
        f"COPY (SELECT {', '.join(TEXT_COLUMNS)} FROM orders WHERE tenant_id = 't-001' ORDER BY id) "
        "TO STDOUT (FORMAT csv, HEADER)"
    ) as cp:
        for chunk in cp:
            copied += chunk
    assert text.encode() == bytes(copied)


def test_parquet_roundtrip_big_tenant_typed_values(catalog, source_url, s3_client, bucket, prefix, pg):
    _, outcome, _, manifest, _ = export(
        catalog, source_url, s3_client, bucket, prefix, tenant_id=BIG, format="parquet"
    )
    table = parquet_table(s3_client, bucket, manifest)
    rows = pg.execute(
        f"SELECT {', '.join(TEXT_COLUMNS)} FROM orders WHERE tenant_id = %s ORDER BY id", [BIG]
    ).fetchall()
    assert table.num_rows == len(rows) == outcome.rows >= 100_000
    got = table.to_pylist()
    for want, have in zip(rows, got, strict=True):
        want_d = dict(zip(TEXT_COLUMNS, want, strict=True))
        attrs = have.pop("attrs")
        assert (json.loads(attrs) if attrs is not None else None) == want_d.pop("attrs")
        assert have == want_d  # int ids, exact Decimals, UTC instants, "" vs NULL
    assert isinstance(got[1]["amount"], Decimal)
    types = {c["name"]: c for c in manifest["columns"]}
    assert types["amount"]["postgres_type"] == "numeric(12,2)"
    assert types["amount"]["output_type"] == "decimal128(12, 2)"


def test_filters_and_columns_narrow_the_export(catalog, source_url, s3_client, bucket, prefix, pg):
    filters = {"date_from": "2024-03-01", "date_to": "2024-09-01T00:00:00Z", "status": ["paid", "refunded"]}
    cols = ["id", "created_at", "amount", "status"]
    _, _, _, manifest, _ = export(
        catalog, source_url, s3_client, bucket, prefix, tenant_id="t-002", filters=filters, columns=cols
    )
    header, rows = csv_rows(s3_client, bucket, manifest)
    expected = expected_text(
        pg,
        "tenant_id = %s AND created_at >= %s AND created_at < %s AND status = ANY(%s)",
        ["t-002", "2024-03-01T00:00:00Z", "2024-09-01T00:00:00Z", ["paid", "refunded"]],
        cols,
    )
    assert header == cols
    assert rows == expected and len(expected) > 0
    assert {r[3] for r in rows} == {"paid", "refunded"}
    all_rows = pg.execute("SELECT count(*) FROM orders WHERE tenant_id = 't-002'").fetchone()[0]
    assert len(expected) < all_rows
    assert manifest["filters"]["status"] == ["paid", "refunded"]


def test_max_rows_per_file_splits_and_manifest_lists_files(
    catalog, source_url, s3_client, bucket, prefix, pg
):
    tenant = "t-001"
    total = pg.execute("SELECT count(*) FROM orders WHERE tenant_id = %s", [tenant]).fetchone()[0]
    per_file = total // 3 + 1
    _, _outcome, done, manifest, _ = export(
        catalog, source_url, s3_client, bucket, prefix, tenant_id=tenant, max_rows_per_file=per_file
    )
    assert len(manifest["files"]) == 3 == len(done.files)
    assert [f["rows"] for f in manifest["files"]] == [per_file, per_file, total - 2 * per_file]
    assert [f["key"].rsplit("/", 1)[1] for f in manifest["files"]] == [
        "part-00001.csv.gz",
        "part-00002.csv.gz",
        "part-00003.csv.gz",
    ]
    _, rows = csv_rows(s3_client, bucket, manifest)
    assert rows == expected_text(pg, "tenant_id = %s", [tenant])
    for f, prev in zip(manifest["files"][1:], manifest["files"], strict=False):
        assert int(f["first_key"]) > int(prev["last_key"])
    head = s3_client.head_object(Bucket=bucket, Key=manifest["files"][0]["key"])
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["tenant-id"] == tenant and head["Metadata"]["export-id"] == "x1"
    s3_client.head_object(Bucket=bucket, Key=done.manifest_key.replace("manifest.json", "_SUCCESS"))

    # A retry that makes fewer files leaves no stale file beside the new manifest.
    _, _, _, manifest2, _ = export(catalog, source_url, s3_client, bucket, prefix, tenant_id=tenant)
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=done.manifest_key.rsplit("/", 1)[0] + "/")
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"])
    assert names == ["_SUCCESS", "manifest.json", "part-00001.csv.gz"]
    assert manifest2["files"][0]["rows"] == total


def test_empty_export_still_writes_a_readable_file(catalog, source_url, s3_client, bucket, prefix):
    for fmt in ("jsonl", "json", "xlsx", "csv_excel"):
        _, outcome, _, manifest, _ = export(
            catalog, source_url, s3_client, bucket, prefix, tenant_id="no-such-tenant", format=fmt
        )
        assert outcome.rows == 0 and len(manifest["files"]) == 1
        raw = get_bytes(s3_client, bucket, manifest["files"][0]["key"])
        raw = gzip.decompress(raw) if manifest["files"][0]["key"].endswith(".gz") else raw
        if fmt == "jsonl":
            assert raw == b""
        elif fmt == "json":
            assert json.loads(raw) == []
        elif fmt == "csv_excel":
            assert raw == b"\xef\xbb\xbf" + ",".join(TEXT_COLUMNS).encode() + b"\r\n"
        else:
            sheet = openpyxl.load_workbook(io.BytesIO(raw)).active
            assert list(sheet.iter_rows(values_only=True)) == [tuple(TEXT_COLUMNS)]
            assert manifest["files"][0]["sheets"] == [{"name": "Sheet1", "rows": 0}]
    for fmt in ("csv", "parquet"):
        _, outcome, _, manifest, _ = export(
            catalog, source_url, s3_client, bucket, prefix, tenant_id="no-such-tenant", format=fmt
        )
        assert outcome.rows == 0 and len(manifest["files"]) == 1
        if fmt == "csv":
            header, rows = csv_rows(s3_client, bucket, manifest)
            assert header == TEXT_COLUMNS and rows == []
        else:
            table = parquet_table(s3_client, bucket, manifest)
            assert table.num_rows == 0 and table.schema.field("id").type.bit_width == 64


def test_presigned_link_downloads_and_tampering_is_refused(catalog, source_url, s3_client, bucket, prefix):
    _, outcome, done, _, _ = export(catalog, source_url, s3_client, bucket, prefix, tenant_id="t-003")
    with urllib.request.urlopen(done.files[0].url, timeout=10) as resp:
        body = resp.read()
        assert 'filename="orders-t-003-x1-00001.csv.gz"' in resp.headers["Content-Disposition"]
    assert len(body) == outcome.files[0].bytes
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in done.files[0].url  # SigV4, not SigV2
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(done.files[0].url.replace("t-003", "t-004"), timeout=10)
    assert info.value.code == 403


class _FailOnPart:
    """Makes the real client fail on upload_part number `n` (a network failure mid-export)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise ConnectionResetError("injected: connection reset during UploadPart")


def test_s3_failure_mid_export_aborts_the_upload(catalog, source_url, bucket, prefix, s3_client_settings):
    client = make_s3_client(max_attempts=1, **s3_client_settings)
    client.meta.events.register("before-send.s3.UploadPart", _FailOnPart(2))
    with pytest.raises(Exception, match="injected"):
        export(
            catalog, source_url, client, bucket, prefix, tenant_id=BIG, compression="none", part_size=5 << 20
        )
    assert open_uploads(client, bucket, prefix) == []
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    assert listed.get("KeyCount", 0) == 0  # no half-written file, no manifest, no _SUCCESS


@pytest.mark.parametrize("fmt", ["json", "xlsx", "jsonl"])
def test_new_formats_split_into_files_with_every_row_once(
    fmt, catalog, source_url, s3_client, bucket, prefix, pg
):
    tenant = "t-001"
    ids = [r[0] for r in pg.execute("SELECT id FROM orders WHERE tenant_id = %s ORDER BY id", [tenant])]
    per_file = len(ids) // 3 + 1
    _, _, _, manifest, _ = export(
        catalog,
        source_url,
        s3_client,
        bucket,
        prefix,
        tenant_id=tenant,
        format=fmt,
        max_rows_per_file=per_file,
    )
    assert [f["rows"] for f in manifest["files"]] == [per_file, per_file, len(ids) - 2 * per_file]
    got = []
    for f in manifest["files"]:
        raw = get_bytes(s3_client, bucket, f["key"])
        if fmt == "xlsx":
            rows = openpyxl.load_workbook(io.BytesIO(raw)).active.iter_rows(min_row=2, values_only=True)
            got += [r[0] for r in rows]
        elif fmt == "json":
            got += [int(o["id"]) for o in json.loads(gzip.decompress(raw))]
        else:
            got += [int(json.loads(line)["id"]) for line in gzip.decompress(raw).splitlines()]
        if fmt != "xlsx":  # bigint is a JSON string of its digits (type contract)
            assert all(isinstance(i, int) for i in got)
    assert got == ids
