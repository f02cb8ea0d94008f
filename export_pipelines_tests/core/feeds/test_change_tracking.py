"""Change tracking on a tenant table: the catalog's checks, and what the installation does to the
table (the transaction-id column, its index, the tombstones), run twice."""

from __future__ import annotations

import psycopg
import pytest
import yaml

from export_pipelines.core.engine.change_tracking import install
from export_pipelines.core.errors import CatalogError
from export_pipelines.core.requests.catalog import parse_catalog

BASE = """
resources:
  items:
    table: public.ct_items
    tenant_column: tenant_id
    key: id
    columns: [id, tenant_id, name]
"""


def catalog_with(extra: str):
    return parse_catalog(yaml.safe_load(BASE + extra), "test.yaml")


def test_catalog_requires_a_primary_key_with_change_tracking():
    with pytest.raises(CatalogError, match=r"resources\.items\.primary_key: required with change_tracking"):
        catalog_with("    change_tracking: true\n")


def test_catalog_primary_key_must_be_the_key_within_the_tenant():
    with pytest.raises(CatalogError, match=r"primary_key: must be \[id\] or \[tenant_id, id\].*\['name'\]"):
        catalog_with("    change_tracking: true\n    primary_key: [name]\n")


def test_catalog_change_tracking_must_be_a_boolean():
    with pytest.raises(CatalogError, match="change_tracking: must be true or false, got 'yes'"):
        catalog_with("    change_tracking: 'yes'\n    primary_key: [tenant_id, id]\n")


def test_catalog_accepts_tracking():
    spec = catalog_with("    change_tracking: true\n    primary_key: [tenant_id, id]\n").resource("items")
    assert spec.change_tracking and spec.primary_key == ("tenant_id", "id")


@pytest.fixture(scope="module")
def items(source_url):
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.ct_items")
        if conn.execute("SELECT to_regclass('public.export_tombstones')").fetchone()[0]:
            conn.execute("DELETE FROM public.export_tombstones WHERE resource = 'items'")
        conn.execute(
            "CREATE TABLE public.ct_items (tenant_id text, id bigint, name text, PRIMARY KEY (tenant_id, id))"
        )
        conn.execute("INSERT INTO public.ct_items SELECT 't1', g, 'old' FROM generate_series(1, 50) g")
    return catalog_with("    change_tracking: true\n    primary_key: [tenant_id, id]\n").resource("items")


def test_install_is_idempotent_and_tracks_writes_and_deletes(source_url, items):
    install(source_url, items)
    install(source_url, items)  # the second run changes nothing and does not fail
    with psycopg.connect(source_url, autocommit=True) as conn:
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.ct_items'::regclass AND NOT tgisinternal "
            "ORDER BY 1"
        ).fetchall()
        assert [t[0] for t in triggers] == [
            "items_export_tombstone_del",
            "items_export_tombstone_upd",
            "items_export_xid",
        ]
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ct_items_export_xid_idx'"
        ).fetchone()
        assert index and "(tenant_id, _export_xid)" in index[0]
        # Rows from before tracking: NULL; a write: the writing transaction's id.
        assert conn.execute("SELECT count(*) FROM ct_items WHERE _export_xid IS NULL").fetchone()[0] == 50
        with conn.transaction():
            xid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
            conn.execute("UPDATE ct_items SET name = 'new' WHERE id = 1")
            with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():  # a savepoint
                conn.execute("UPDATE ct_items SET name = 'sp' WHERE id = 2")
                conn.execute("SELECT 1/0")
            conn.execute("DELETE FROM ct_items WHERE id = 3")
            conn.execute("UPDATE ct_items SET id = 1000 WHERE id = 4")  # the key moves: 4 is gone
        assert conn.execute("SELECT _export_xid::text FROM ct_items WHERE id = 1").fetchone()[0] == xid
        assert conn.execute("SELECT _export_xid FROM ct_items WHERE id = 2").fetchone()[0] is None
        tombstones = conn.execute(
            "SELECT resource, tenant_id, pk, xid::text FROM export_tombstones WHERE resource = 'items' "
            "ORDER BY pk->>'id'"
        ).fetchall()
        assert tombstones == [
            ("items", "t1", {"tenant_id": "t1", "id": 3}, xid),
            ("items", "t1", {"tenant_id": "t1", "id": 4}, xid),
        ]


def test_backfill_fills_existing_rows_in_batches(source_url, items):
    seen: list[int] = []
    done = install(source_url, items, backfill=True, batch_rows=7, on_batch=seen.append)
    with psycopg.connect(source_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM ct_items WHERE _export_xid IS NULL").fetchone()[0] == 0
        distinct = conn.execute("SELECT count(DISTINCT _export_xid) FROM ct_items").fetchone()[0]
    assert done.backfilled_rows == 47  # 50 rows - 1 deleted - 2 written by the test above
    assert seen[-1] == 47 and len(seen) == 8  # 7 batches of at most 7, then the empty one
    assert distinct >= 7  # one transaction per batch


def test_track_off_drops_the_triggers_and_with_drop_column_the_column(
    source_url, items, tmp_path, monkeypatch
):
    from export_pipelines.cli.main import main

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(BASE + "    change_tracking: true\n    primary_key: [tenant_id, id]\n")
    monkeypatch.setenv("EXPORT_CATALOG", str(catalog))
    monkeypatch.setenv("SOURCE_DATABASE_URL", source_url)
    assert main(["track", "items"]) == 0
    assert main(["track", "items", "--off"]) == 0
    with psycopg.connect(source_url, autocommit=True) as conn:
        count = (
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.ct_items'::regclass AND NOT tgisinternal"
        )
        assert conn.execute(count).fetchone()[0] == 0
        assert (
            conn.execute("SELECT count(*) FROM export_tombstones WHERE resource = 'items'").fetchone()[0] == 0
        )
        conn.execute("DELETE FROM ct_items WHERE id = 5")  # no tombstone any more
        assert (
            conn.execute("SELECT count(*) FROM export_tombstones WHERE resource = 'items'").fetchone()[0] == 0
        )
    assert main(["track", "items", "--off", "--drop-column"]) == 0
    with psycopg.connect(source_url, autocommit=True) as conn:
        has = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.ct_items'::regclass "
            "AND attname = '_export_xid' AND NOT attisdropped"
        ).fetchone()[0]
    assert has == 0
    install(source_url, items)  # and back on
