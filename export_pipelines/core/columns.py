"""Column metadata read from PostgreSQL: a leaf module, so encoders, queries and the type
contract can share it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    pg_type: str  # format_type(), e.g. 'numeric(12,2)', 'timestamp with time zone'
    type_name: str  # pg_type.typname of the base type, e.g. 'numeric', 'timestamptz', '_int4'
    typmod: int
