"""The tenants the catalog's `tenants` table lists (all, or the enterprise ones), for the
tenant partitions and the monthly dumps."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from export_pipelines.core.catalog import Catalog


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
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return [r[0] for r in conn.execute(sql.SQL("{} ORDER BY 1").format(query), params)]
