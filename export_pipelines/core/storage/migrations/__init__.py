"""The project's tables in the source database, created and upgraded by one idempotent `migrate`.

- `export_requests`: the queue apps write to and the status they read (core/requests/request_store.py).
- `export_checkpoints`, `export_checkpoint_files`, `export_checkpoint_parts`: what an export has
  durably uploaded, so a retry resumes (core/engine/checkpoints.py).
- `export_deliveries`: notifications waiting to be sent, sent, or given up (core/delivery/delivery_store.py).
- `export_destinations`: tenants' own buckets, containers and SFTP servers (core/delivery/destinations/).
- `export_feeds`: tenants' feeds, each naming one of those destinations or none
  (core/requests/feed_store.py).
- `export_limits`: the per-tenant caps the insert trigger enforces (written by `migrate`).
- `export_request_status_history`: every status a request row took, with the time (a trigger
  writes it), so operators and tests see the lifecycle; a guard trigger keeps a canceled row
  canceled.
- `export_refusals`: how many requests each cap refused, for the metrics (core/requests/refusals.py).
- the role `export_app`: what apps may do with export_requests (docs/security.md).

Each statement may run again (IF NOT EXISTS, DROP CONSTRAINT IF EXISTS + ADD, CREATE OR REPLACE,
guarded role creation), so migrating an up-to-date database changes nothing.

The SQL lives in one module per table group (request_table, checkpoints, tenant_tables, feeds,
destinations, metrics); this module runs it, in the order of MIGRATIONS.
"""

from __future__ import annotations

import threading

from export_pipelines.core.storage.migrations.checkpoints import CHECKPOINT_TABLES
from export_pipelines.core.storage.migrations.destinations import DESTINATIONS_TABLE
from export_pipelines.core.storage.migrations.feeds import FEED_DESTINATION, FEEDS
from export_pipelines.core.storage.migrations.metrics import METRICS_COUNTERS
from export_pipelines.core.storage.migrations.request_table import (
    PENDING_NOTIFY,
    REQUESTS_TABLE,
    STATUS_HISTORY,
    TENANT_SOURCE,
    TRUST_BOUNDARY,
    set_tenant_max_active,
    set_tenant_source,
)
from export_pipelines.core.storage.migrations.tenant_tables import (
    API_TABLES,
    DELIVERIES_TABLE,
    TENANT_SETTINGS_TABLE,
)
from export_pipelines.core.storage.pg_connect import open_connection

# In the order the tables and columns were added: later statements alter what earlier ones made
# (TRUST_BOUNDARY's columns on export_requests, METRICS_COUNTERS' on export_deliveries), and an
# existing database has been migrated in this order.
MIGRATIONS = (
    REQUESTS_TABLE,
    CHECKPOINT_TABLES,
    DELIVERIES_TABLE,
    TRUST_BOUNDARY,
    API_TABLES,
    TENANT_SETTINGS_TABLE,
    PENDING_NOTIFY,
    STATUS_HISTORY,
    METRICS_COUNTERS,
    TENANT_SOURCE,
    FEEDS,
    DESTINATIONS_TABLE,
    FEED_DESTINATION,
)

_migrated: set[str] = set()
_migrated_lock = threading.Lock()


def migrate(
    conninfo: str,
    *,
    tenant_max_active: int | None = None,
    tenant_source: tuple[str, str, str] | None = None,
) -> None:
    """Bring every table up to date, in one transaction. Concurrent first runs (setup, tests, a
    sensor's first tick) wait on the same transaction-scoped advisory lock instead of racing on
    CREATE; the lock ends with the transaction, even if the connection dies.

    `tenant_max_active` (Settings.tenant_max_active, EXPORT_TENANT_MAX_ACTIVE) is written to
    export_limits, where the insert trigger reads it; None leaves the stored value.
    `tenant_source` (schema, table, key column of the catalog's tenants table) is recorded for the
    insert trigger that refuses unknown tenants; None leaves what is recorded."""
    with open_connection(conninfo, options="-c statement_timeout=60s") as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('export_pipelines_migrations'))")
        for statement in MIGRATIONS:
            conn.execute(statement)
        if tenant_max_active is not None:
            set_tenant_max_active(conn, tenant_max_active)
        if tenant_source is not None:
            set_tenant_source(conn, tenant_source)


def migrate_once(conninfo: str) -> None:
    """`migrate` on first use of a database in this process (a sensor may tick before anyone ran
    `export-pipelines migrate`)."""
    with _migrated_lock:
        if conninfo not in _migrated:
            migrate(conninfo)
            _migrated.add(conninfo)
