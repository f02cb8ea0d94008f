"""The tenants the catalog's `tenants` table lists (all, or the enterprise ones), for the
tenant partitions and the monthly dumps; and whether a requested tenant exists."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from export_pipelines.core.errors import ConfigurationError, InvalidRequest
from export_pipelines.core.requests.catalog import Catalog, shown
from export_pipelines.core.storage.pg_connect import open_connection


def list_tenants(conninfo: str, catalog: Catalog, *, enterprise_only: bool = False) -> list[str]:
    """Tenant ids, sorted; none when the catalog names no tenants table (or, for enterprise_only,
    no enterprise column)."""
    tenants = catalog.tenants
    if tenants is None:
        return []
    query = sql.SQL("SELECT {key}::text FROM {table}").format(
        key=sql.Identifier(tenants.key), table=sql.Identifier(tenants.table.schema, tenants.table.name)
    )
    params: list[Any] = []
    if enterprise_only:
        if not tenants.enterprise_column:
            return []
        query = sql.SQL("{} WHERE {} = %s").format(query, sql.Identifier(tenants.enterprise_column))
        params.append(tenants.enterprise_value)
    with open_connection(conninfo, autocommit=True) as conn:
        try:
            return [r[0] for r in conn.execute(sql.SQL("{} ORDER BY 1").format(query), params)]
        except psycopg.errors.UndefinedTable:
            raise missing_tenants_table(catalog) from None


def missing_tenants_table(catalog: Catalog) -> ConfigurationError:
    """The catalog names a tenants table the database does not have (yet)."""
    assert catalog.tenants is not None
    table = f"{catalog.tenants.table.schema}.{catalog.tenants.table.name}"
    return ConfigurationError(
        f"tenants: the catalog's tenants table {table} does not exist in the source database "
        "(create it with a row per tenant, or point the catalog's `tenants` at the table that lists them)"
    )


def existing_tenants(conninfo: str, catalog: Catalog, tenant_ids: list[str]) -> set[str] | None:
    """Which of `tenant_ids` the catalog's tenants table lists; None when the catalog names no
    tenants table (then nothing can be checked, and nothing is refused)."""
    tenants = catalog.tenants
    if tenants is None:
        return None
    if not tenant_ids:
        return set()
    query = sql.SQL("SELECT {key}::text FROM {table} WHERE {key}::text = ANY(%s)").format(
        key=sql.Identifier(tenants.key), table=sql.Identifier(tenants.table.schema, tenants.table.name)
    )
    with open_connection(conninfo, autocommit=True) as conn:
        try:
            return {r[0] for r in conn.execute(query, [sorted(set(tenant_ids))])}
        except psycopg.errors.UndefinedTable:
            raise missing_tenants_table(catalog) from None


def require_tenant(conninfo: str, catalog: Catalog, tenant_id: str) -> None:
    """Refuse a tenant the catalog's tenants table does not list (an export of no rows, with a
    link to a header-only file, is a wrong answer, not an empty one)."""
    found = existing_tenants(conninfo, catalog, [tenant_id])
    if found is not None and tenant_id not in found:
        raise unknown_tenant(catalog, tenant_id)


def unknown_tenant(catalog: Catalog, tenant_id: str) -> InvalidRequest:
    """The error for a tenant id the tenants table does not list."""
    where = (
        f"{catalog.tenants.table.schema}.{catalog.tenants.table.name}.{catalog.tenants.key}"
        if catalog.tenants
        else "the tenants table"
    )
    return InvalidRequest("tenant_id", f"{shown(tenant_id)} is not a tenant (not in {where})")
