"""The only SQL on export_tenant_settings: tenants' default notify targets (webhook, email), used
by their monthly dumps and by requests without targets of their own. Written by `export-pipelines
tenant-notify` and the API's `PUT /v1/notify-settings`; validated like a request's targets
(request.check_notify; docs/requests.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from export_pipelines.core.requests.request import check_notify
from export_pipelines.core.storage.pg_store import PgStore


@dataclass(frozen=True)
class TenantTargets:
    tenant_id: str
    webhook_url: str | None = None
    email: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "webhook_url": self.webhook_url, "email": self.email}


def _clean(value: str | None) -> str | None:
    return value if value not in (None, "") else None


class TenantSettingsStore(PgStore):
    def get(self, tenant_id: str) -> TenantTargets:
        row = self.execute(
            "SELECT webhook_url, email FROM export_tenant_settings WHERE tenant_id = %s", [tenant_id]
        ).fetchone()
        if row is None:
            return TenantTargets(tenant_id)
        return TenantTargets(tenant_id, row[0], row[1])

    def set(
        self,
        tenant_id: str,
        *,
        webhook_url: str | None,
        email: str | None,
        allowlist: tuple[str, ...] = (),
    ) -> TenantTargets:
        """Store both targets (None or "" clears one; both cleared: no row). Raises InvalidRequest
        naming the field."""
        check_notify(webhook_url, email, allowlist)
        webhook_url, email = _clean(webhook_url), _clean(email)
        if webhook_url is None and email is None:
            return self.clear(tenant_id)
        self.execute(
            """
            INSERT INTO export_tenant_settings (tenant_id, webhook_url, email) VALUES (%s, %s, %s)
            ON CONFLICT (tenant_id) DO UPDATE SET webhook_url = excluded.webhook_url,
                email = excluded.email, updated_at = now()
            """,
            [tenant_id, webhook_url, email],
        )
        return TenantTargets(tenant_id, webhook_url, email)

    def clear(self, tenant_id: str) -> TenantTargets:
        self.execute("DELETE FROM export_tenant_settings WHERE tenant_id = %s", [tenant_id])
        return TenantTargets(tenant_id)


def targets(
    conninfo: str, tenant_id: str, webhook_url: str | None, email: str | None
) -> tuple[str | None, str | None]:
    """The targets to notify: the row's (or run config's) own when it names any, else the tenant's
    defaults. Never raises (a notification never fails an export): on error, the given ones."""
    if webhook_url or email:
        return webhook_url, email
    try:
        with TenantSettingsStore(conninfo) as store:
            t = store.get(tenant_id)
    except Exception:  # noqa: BLE001
        return webhook_url, email
    return t.webhook_url, t.email
