"""The one place a run config for the export graph is written (sensor, schedule, CLI, bench, tests).

Run config is given once, to count_rows; the later ops receive the plan as an input.
"""

from __future__ import annotations

from typing import Any

ENTRY_OP = "count_rows"
# The monthly job's one op (its asset), whose config is resource and format (monthly_export.py).
MONTHLY_OP = "monthly_export"


def export_run_config(
    *,
    tenant_id: str,
    resource: str,
    format: str | None = None,
    compression: str | None = None,
    columns: list[str] | None = None,
    filters: dict[str, Any] | None = None,
    request_id: str | None = None,
    webhook_url: str | None = None,
    email: str | None = None,
    max_rows_per_file: int | None = None,
    link_expiry_hours: int | None = None,
    destination_id: str | None = None,
) -> dict[str, Any]:
    """Run config for tenant_export_job (or the monthly job's launchpad). Fields left None are
    left out, so ExportConfig's defaults apply."""
    config: dict[str, Any] = {"tenant_id": tenant_id, "resource": resource}
    optional = {
        "format": format,
        "compression": compression,
        "columns": columns,
        "filters": filters,
        "request_id": request_id,
        "max_rows_per_file": max_rows_per_file,
        "link_expiry_hours": link_expiry_hours,
        "destination_id": destination_id,  # the id only: credentials never enter run config
    }
    config.update({name: value for name, value in optional.items() if value is not None})
    if webhook_url is not None or email is not None:
        config["notify"] = {"webhook_url": webhook_url, "email": email}
    return {"ops": {ENTRY_OP: {"config": config}}}
