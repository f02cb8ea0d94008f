"""The catalog: the only tables, columns and filters an export may touch (docs/requests.md)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import yaml

from export_pipelines.core.errors import CatalogError, InvalidRequest

# Plain identifiers only: the catalog names tables and columns, it never carries SQL.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def allowed(values: list[str] | tuple[str, ...]) -> str:
    return ", ".join(sorted(values)) if values else "(none)"


def shown(value: Any, limit: int = 60) -> str:
    """repr() of a user's value, cut short: an error must not echo a megabyte back into the
    request row, the run's logs or the UI."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond str()'s 4300-digit limit
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


@dataclass(frozen=True)
class TableName:
    schema: str
    name: str

    @classmethod
    def parse(cls, text: str, where: str) -> TableName:
        parts = text.split(".")
        if len(parts) == 1:
            parts = ["public", parts[0]]
        if len(parts) != 2 or not all(_IDENTIFIER.match(p) for p in parts):
            raise CatalogError(f"{where}: table must be 'schema.table' of plain identifiers, got {text!r}")
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class ResourceSpec:
    name: str
    table: TableName
    tenant_column: str
    key: str
    time_column: str | None
    columns: tuple[str, ...]
    filters: tuple[str, ...]
    # Change tracking (docs/feeds.md): the table carries a transaction-id column and a tombstone
    # trigger, so feeds can deliver only what changed. The primary key is [key] or
    # [tenant_column, key]: one key column within a tenant, what keyset batches walk.
    change_tracking: bool = False
    primary_key: tuple[str, ...] = ()

    def check_columns(self, requested: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
        """The requested columns in the order given (default: all), or a CatalogError."""
        if not requested:
            return self.columns
        unknown = [c for c in requested if c not in self.columns]
        if unknown:
            listed = ", ".join(map(shown, unknown[:5])) + (
                f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            )
            raise InvalidRequest(
                "columns",
                f"unknown column(s) {listed} for resource {self.name!r}; allowed: {allowed(self.columns)}",
            )
        if len(set(requested)) != len(requested):
            raise InvalidRequest("columns", "a column is listed twice")
        return tuple(requested)

    def check_filter(self, column: str) -> None:
        if column not in self.filters:
            raise InvalidRequest(
                "filters",
                f"{shown(column)} is not a filter of resource {self.name!r}; allowed: "
                f"{allowed(['date_from', 'date_to', *self.filters])}",
            )


@dataclass(frozen=True)
class TenantsSpec:
    table: TableName
    key: str
    enterprise_column: str | None
    enterprise_value: str | None


@dataclass(frozen=True)
class Catalog:
    resources: dict[str, ResourceSpec]
    tenants: TenantsSpec | None
    source: str

    def resource(self, name: str) -> ResourceSpec:
        try:
            return self.resources[name]
        except KeyError:
            raise InvalidRequest(
                "resource", f"unknown resource {shown(name)}; allowed: {allowed(list(self.resources))}"
            ) from None


def _ident(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise CatalogError(f"{where}: must be a plain column name, got {value!r}")
    return value


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise CatalogError(f"{where}: must be a list of column names, got {value!r}")
    return tuple(_ident(v, f"{where}[{i}]") for i, v in enumerate(value))


def _parse_resource(name: str, raw: Any) -> ResourceSpec:
    where = f"resources.{name}"
    if not _IDENTIFIER.match(name):
        raise CatalogError(f"{where}: resource names are plain identifiers")
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must be a mapping")
    known = {
        "table",
        "tenant_column",
        "key",
        "time_column",
        "columns",
        "filters",
        "change_tracking",
        "primary_key",
    }
    extra = set(raw) - known
    if extra:
        raise CatalogError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {allowed(sorted(known))}")
    for required in ("table", "tenant_column", "key", "columns"):
        if required not in raw:
            raise CatalogError(f"{where}.{required}: required")
    columns = _str_list(raw["columns"], f"{where}.columns")
    if not columns:
        raise CatalogError(f"{where}.columns: must not be empty")
    spec = ResourceSpec(
        name=name,
        table=TableName.parse(str(raw["table"]), f"{where}.table"),
        tenant_column=_ident(raw["tenant_column"], f"{where}.tenant_column"),
        key=_ident(raw["key"], f"{where}.key"),
        time_column=_ident(raw["time_column"], f"{where}.time_column") if raw.get("time_column") else None,
        columns=columns,
        filters=_str_list(raw.get("filters") or [], f"{where}.filters"),
        **_change_tracking(raw, where),
    )
    for field in ("key", "tenant_column", "time_column"):
        value = getattr(spec, field)
        if value is not None and value not in spec.columns:
            raise CatalogError(f"{where}.{field}: {value!r} must also be listed in columns")
    for f in spec.filters:
        if f not in spec.columns:
            raise CatalogError(f"{where}.filters: {f!r} must also be listed in columns")
    if spec.change_tracking:
        allowed_keys = [[spec.key], [spec.tenant_column, spec.key]]
        if list(spec.primary_key) not in allowed_keys:
            raise CatalogError(
                f"{where}.primary_key: must be [{spec.key}] or [{spec.tenant_column}, {spec.key}] "
                f"(the key column within a tenant, with or without the tenant column), "
                f"got {list(spec.primary_key)}"
            )
    return spec


def _change_tracking(raw: dict[str, Any], where: str) -> dict[str, Any]:
    tracking = raw.get("change_tracking", False)
    if not isinstance(tracking, bool):
        raise CatalogError(f"{where}.change_tracking: must be true or false, got {tracking!r}")
    if "primary_key" in raw:
        pk = raw["primary_key"]
        pk = [pk] if isinstance(pk, str) else pk
        primary_key = _str_list(pk, f"{where}.primary_key")
    else:
        primary_key = ()
    if tracking and not primary_key:
        raise CatalogError(
            f"{where}.primary_key: required with change_tracking: true "
            f"(e.g. [{raw.get('tenant_column', 'tenant_id')}, {raw.get('key', 'id')}])"
        )
    return {"change_tracking": tracking, "primary_key": primary_key}


def parse_catalog(data: Any, source: str = "<memory>") -> Catalog:
    if not isinstance(data, dict) or not isinstance(data.get("resources"), dict) or not data["resources"]:
        raise CatalogError(f"{source}: needs a non-empty 'resources' mapping")
    resources = {name: _parse_resource(name, raw) for name, raw in data["resources"].items()}
    tenants = None
    raw_t = data.get("tenants")
    if raw_t is not None:
        if not isinstance(raw_t, dict) or "table" not in raw_t or "key" not in raw_t:
            raise CatalogError(f"{source}: tenants needs 'table' and 'key'")
        tenants = TenantsSpec(
            table=TableName.parse(str(raw_t["table"]), "tenants.table"),
            key=_ident(raw_t["key"], "tenants.key"),
            enterprise_column=(
                _ident(raw_t["enterprise_column"], "tenants.enterprise_column")
                if raw_t.get("enterprise_column")
                else None
            ),
            enterprise_value=str(raw_t["enterprise_value"]) if raw_t.get("enterprise_value") else None,
        )
    return Catalog(resources=resources, tenants=tenants, source=source)


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load and validate the catalog from `path` (the EXPORT_CATALOG setting), else the packaged demo."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise CatalogError(f"EXPORT_CATALOG: no such file {str(p)!r}")
        text, source = p.read_text(encoding="utf-8"), str(p)
    else:
        ref = importlib_resources.files("export_pipelines").joinpath("catalog.yaml")
        text, source = ref.read_text(encoding="utf-8"), "export_pipelines/catalog.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from exc
    return parse_catalog(data, source)
