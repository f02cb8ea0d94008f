"""The only SQL on export_destinations. Credentials go in encrypted (secrets.SecretBox) and come out
decrypted only through `for_writer`; every other read carries the fingerprint alone."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.types.json import Jsonb

from export_pipelines.core.delivery.destinations.config import Destination
from export_pipelines.core.delivery.destinations.secrets import SecretBox, fingerprint
from export_pipelines.core.errors import DestinationInUse, DestinationInvalid, DestinationNotFound
from export_pipelines.core.storage.pg_store import PgStore

_COLUMNS = "id::text, tenant_id, kind, name, config, credentials_fingerprint, deleted_at IS NOT NULL"


def _row(row: Any) -> Destination:
    return Destination(
        id=row[0],
        tenant_id=row[1],
        kind=row[2],
        name=row[3],
        config=dict(row[4] or {}),
        credentials_fingerprint=row[5] or "none",
        deleted=bool(row[6]),
    )


class DestinationStore(PgStore):
    def create(
        self,
        box: SecretBox | None,
        tenant_id: str,
        kind: str,
        name: str,
        config: dict[str, Any],
        credentials: dict[str, Any],
    ) -> Destination:
        """Insert a checked destination (config.check_destination). A name already used by a live
        destination of the tenant is refused, naming the field."""
        token = None
        if credentials:
            if box is None:
                raise DestinationInvalid("credentials: this deployment cannot store them (no secrets key)")
            token = box.encrypt(credentials)
        row = self.execute(
            f"""
            INSERT INTO export_destinations
                (tenant_id, kind, name, config, credentials, credentials_fingerprint)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (tenant_id, name) WHERE deleted_at IS NULL DO NOTHING
            RETURNING {_COLUMNS}
            """,
            [tenant_id, kind, name, Jsonb(config), token, fingerprint(credentials)],
        ).fetchone()
        if row is None:
            raise DestinationInvalid(f"name: {name!r} is already used by another destination", "name")
        return _row(row)

    def list(self, tenant_id: str) -> list[Destination]:
        rows = self.execute(
            f"SELECT {_COLUMNS} FROM export_destinations WHERE tenant_id = %s AND deleted_at IS NULL "
            "ORDER BY created_at, id",
            [tenant_id],
        ).fetchall()
        return [_row(r) for r in rows]

    def get(self, destination_id: str, tenant_id: str | None = None) -> Destination | None:
        """The live destination (of `tenant_id`, when given); None if there is none or it was deleted,
        or the id is not one an id can be (a UUID): such text never reaches the database."""
        try:
            uuid.UUID(str(destination_id))
        except ValueError:
            return None
        row = self.execute(
            f"""
            SELECT {_COLUMNS} FROM export_destinations
            WHERE id::text = %s AND (%s::text IS NULL OR tenant_id = %s) AND deleted_at IS NULL
            """,
            [str(destination_id), tenant_id, tenant_id],
        ).fetchone()
        return _row(row) if row else None

    def for_writer(self, box: SecretBox | None, destination_id: str, tenant_id: str) -> Destination:
        """The destination with its credentials decrypted, for the writer that connects now.
        Raises DestinationNotFound when it does not exist, belongs to another tenant or was deleted."""
        row = self.execute(
            f"""
            SELECT {_COLUMNS}, credentials FROM export_destinations
            WHERE id::text = %s AND tenant_id = %s AND deleted_at IS NULL
            """,
            [str(destination_id), tenant_id],
        ).fetchone()
        if row is None:
            raise DestinationNotFound(
                f"destination_id: {destination_id} does not exist (deleted?)", "destination_id"
            )
        found = _row(row)
        if row[7] is None:
            return found
        if box is None:
            raise DestinationInvalid("credentials: this deployment cannot read them (no secrets key)")
        return Destination(**{**found.__dict__, "credentials": box.decrypt(row[7])})

    def delete(self, destination_id: str, tenant_id: str) -> bool:
        """Mark it deleted and wipe its credentials; exports still naming it fail as not found.
        Refused (DestinationInUse, naming them) while a feed names it: the feed's next delivery would
        fail. The row lock pairs with the one a feed takes when it names the destination
        (FeedStore), so a feed made meanwhile is seen here, or sees the destination gone."""
        try:
            uuid.UUID(str(destination_id))
        except ValueError:
            return False
        with self.transaction() as cur:
            found = cur.execute(
                "SELECT id FROM export_destinations WHERE id = %s AND tenant_id = %s AND deleted_at IS NULL "
                "FOR UPDATE",
                [str(destination_id), tenant_id],
            ).fetchone()
            if found is None:
                return False
            feeds = cur.execute(
                "SELECT id::text FROM export_feeds WHERE destination_id = %s ORDER BY created_at, id",
                [str(destination_id)],
            ).fetchall()
            if feeds:
                raise DestinationInUse(str(destination_id), [f[0] for f in feeds])
            cur.execute(
                "UPDATE export_destinations SET deleted_at = now(), updated_at = now(), credentials = NULL "
                "WHERE id = %s",
                [str(destination_id)],
            )
        return True

    def rotate(self, box: SecretBox) -> int:
        """Re-encrypt every stored credential under the newest key of EXPORT_SECRETS_KEY, in one
        transaction; returns how many."""
        count = 0
        with self.transaction() as cur:
            rows = cur.execute(
                "SELECT id, credentials FROM export_destinations WHERE credentials IS NOT NULL FOR UPDATE"
            ).fetchall()
            for destination_id, token in rows:
                cur.execute(
                    "UPDATE export_destinations SET credentials = %s, updated_at = now() WHERE id = %s",
                    [box.rotate(token), destination_id],
                )
                count += 1
        return count
