"""Dagster's PostgreSQL instance storage, holding its connection instead of opening one per query.

dagster-postgres opens a new connection for every read and write (SQLAlchemy NullPool) everywhere
but the webserver. A run writes about 40 events and reads its run record several times, so a
small export spent a quarter of its time in `psycopg2.connect` (py-spy of Celery pool children,
20 exports at once): a TCP/socket connect, a PostgreSQL backend forked per connection, and the
hstore type lookup psycopg2 does on each. This storage keeps one pooled connection per storage
(more only while threads use them at once), checked before use and recycled hourly, and closes
them when the instance is disposed (a run's instance lives as long as the run). Configured in
dagster.yaml and deploy/celery/dagster.yaml as `storage: custom:` with the same config as
`storage: postgres:`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster._core.storage.config import pg_config
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

# Connections beyond the pooled one, for threads that query at once (the daemon's); closed when returned.
MAX_OVERFLOW = 20
RECYCLE_SECONDS = 3600


def _pooled_engine(
    storage: PostgresRunStorage | PostgresEventLogStorage, url: str, token_provider: Any
) -> None:
    # Replaces the NullPool engine the storage made (only used for its table check by then).
    old = storage._engine
    storage._engine = create_pg_engine(
        url,
        token_provider,
        isolation_level="AUTOCOMMIT",
        pool_size=1,
        max_overflow=MAX_OVERFLOW,
        pool_recycle=RECYCLE_SECONDS,
        pool_pre_ping=True,  # a server restart costs a reconnect, not a failed event write
    )
    old.dispose()


class _HoldsItsConnection:
    """Mixin for a dagster-postgres storage: pooled engine from the start, closed on dispose."""

    _engine: Any

    def __init__(self, postgres_url: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(postgres_url, *args, **kwargs)  # type: ignore[call-arg]
        _pooled_engine(self, postgres_url, kwargs.get("token_provider"))  # type: ignore[arg-type]

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._engine.dispose()


class PooledPostgresRunStorage(_HoldsItsConnection, PostgresRunStorage):
    pass


class PooledPostgresEventLogStorage(_HoldsItsConnection, PostgresEventLogStorage):
    pass


class PooledPostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` whose run and event log storages hold their connections."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        # DagsterPostgresStorage.__init__, with the pooled run and event log storages.
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._run_storage = PooledPostgresRunStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._event_log_storage = PooledPostgresEventLogStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._schedule_storage = PostgresScheduleStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        super(DagsterPostgresStorage, self).__init__()

    @classmethod
    def config_type(cls) -> Any:
        return pg_config()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def dispose(self) -> None:
        self._run_storage.dispose()
        self._event_log_storage.dispose()
