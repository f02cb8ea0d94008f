"""Catalog and request validation: clear errors that name the field and list what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from export_pipelines.core.errors import CatalogError, InvalidRequest
from export_pipelines.core.requests.catalog import load_catalog, parse_catalog
from export_pipelines.core.requests.request import build_request


def test_packaged_catalog_loads(catalog):
    orders = catalog.resource("orders")
    assert orders.key == "id" and orders.tenant_column == "tenant_id"
    assert orders.filters == ("status", "currency")
    assert catalog.tenants is not None and catalog.tenants.enterprise_value == "enterprise"


def test_catalog_from_file(tmp_path: Path):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "resources:\n  things:\n    table: things\n    tenant_column: t\n    key: id\n    columns: [id, t]\n"
    )
    cat = load_catalog(path)
    assert list(cat.resources) == ["things"]
    assert str(cat.resource("things").table) == "public.things"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("resources: {}", "non-empty 'resources'"),
        (
            "resources:\n  o:\n    table: 'x; drop table y'\n    tenant_column: t\n    key: id\n    columns: [id, t]",
            "table",
        ),
        ("resources:\n  o:\n    table: x\n    tenant_column: t\n    key: id\n    columns: [t]", "key"),
        (
            "resources:\n  o:\n    table: x\n    tenant_column: t\n    key: id\n    columns: ['id', 'a b']",
            "plain column",
        ),
        ("resources:\n  o:\n    table: x\n    key: id\n    columns: [id]", "tenant_column: required"),
        (
            "resources:\n  o:\n    table: x\n    tenant_column: id\n    key: id\n    columns: [id]\n    sql: x",
            "unknown field",
        ),
        (
            "resources:\n  o:\n    table: x\n    tenant_column: id\n    key: id\n    columns: [id]\n    filters: [z]",
            "filters",
        ),
    ],
)
def test_invalid_catalog_is_rejected_at_load(tmp_path: Path, yaml_text: str, message: str):
    import yaml

    with pytest.raises(CatalogError, match=message):
        parse_catalog(yaml.safe_load(yaml_text), "test.yaml")


def test_missing_catalog_file_is_a_clear_error():
    with pytest.raises(CatalogError, match="EXPORT_CATALOG"):
        load_catalog("/nonexistent/catalog.yaml")


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"resource": "invoices"}, "resource", "allowed: orders"),
        ({"columns": ["id", "password"]}, "columns", "allowed: amount, attrs, created_at, currency"),
        ({"filters": {"note": "x"}}, "filters", "allowed: currency, date_from, date_to, status"),
        ({"format": "xml"}, "format", "allowed: csv, csv_excel, json, jsonl, parquet, pdf, xlsx"),
        ({"format": "parquet", "compression": "gzip"}, "compression", "allowed: none, snappy, zstd"),
        ({"format": "xlsx", "compression": "gzip"}, "compression", "allowed: none"),
        ({"format": "jsonl", "compression": "brotli"}, "compression", "allowed: gzip, none, zstd"),
        ({"format": "csv", "compression": "bz2"}, "compression", "allowed: gzip, none, zstd"),
        ({"filters": {"date_from": "yesterday"}}, "filters.date_from", "ISO 8601"),
        ({"filters": {"date_from": "2024-02-01", "date_to": "2024-01-01"}}, "filters.date_to", "after"),
        ({"tenant_id": ""}, "tenant_id", "non-empty"),
        ({"max_rows_per_file": 0}, "max_rows_per_file", "positive"),
        ({"link_expiry_hours": 24 * 8}, "link_expiry_hours", "1 to 168"),
        ({"export_id": "../other-tenant"}, "export_id", "A-Z"),
        ({"filters": {"status": []}}, "filters.status", "at least one"),
        ({"filters": [1, 2]}, "filters", "must be a JSON object"),
    ],
)
def test_invalid_request_names_field_and_allowed_values(catalog, kwargs, field, allowed):
    args = {"tenant_id": "t-001", "resource": "orders", **kwargs}
    with pytest.raises(InvalidRequest) as info:
        build_request(catalog, **args)
    assert info.value.field == field
    assert allowed in str(info.value)


def test_defaults(catalog):
    req = build_request(catalog, tenant_id="t-001", resource="orders")
    assert (req.format, req.compression) == ("csv", "gzip")
    assert req.columns == catalog.resource("orders").columns
    pq_req = build_request(catalog, tenant_id="t-001", resource="orders", format="parquet")
    assert pq_req.compression == "zstd"
    defaults = {
        fmt: build_request(catalog, tenant_id="t-001", resource="orders", format=fmt).compression
        for fmt in ("jsonl", "json", "csv_excel", "xlsx")
    }
    # Excel opens a plain .csv, and an .xlsx is a ZIP archive already.
    assert defaults == {"jsonl": "gzip", "json": "gzip", "csv_excel": "none", "xlsx": "none"}
    dated = build_request(
        catalog, tenant_id="t", resource="orders", filters={"date_from": "2024-03-01", "status": "paid"}
    )
    assert dated.date_from is not None and dated.date_from.tzinfo is not None
    assert dated.filters == {"status": ("paid",)}
