"""The only SQL on export_api_keys: the export API's keys (docs/api.md), one tenant each, or an
operator key that may act for any tenant. Only a SHA-256 of the token is stored, with a short prefix
people can recognise.

A token is `exp_` + 43 url-safe characters (32 random bytes). It is shown once, at creation.

The key table (and the export_requests columns only the API writes) are created by
core/storage/migrations/tenant_tables.py, run by `migrate` with every other table.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from psycopg.rows import RowFactory, dict_row

from export_pipelines.core.errors import Rejected
from export_pipelines.core.storage.pg_store import PgStore

TOKEN_PREFIX = "exp_"
DISPLAY_PREFIX_CHARS = 12  # "exp_" + 8 characters of the random part
MAX_NAME_CHARS = 200


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    id: int
    tenant_id: str | None
    name: str
    key_prefix: str
    is_operator: bool
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ApiKey:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


class ApiKeyStore(PgStore):
    """Create, list, revoke and look up API keys (each method one short transaction)."""

    row_factory: ClassVar[RowFactory[Any]] = dict_row

    def create(self, tenant_id: str | None, name: str = "", *, operator: bool = False) -> tuple[str, ApiKey]:
        """A new key: (the token, shown once; the stored key)."""
        if not operator and (not isinstance(tenant_id, str) or not tenant_id.strip()):
            raise Rejected("tenant_id: a tenant key needs --tenant (or make an --operator key)", "tenant_id")
        if len(name) > MAX_NAME_CHARS:
            raise Rejected(f"name: at most {MAX_NAME_CHARS} characters", "name")
        token = new_token()
        row = self.execute(
            """
            INSERT INTO export_api_keys (tenant_id, name, key_hash, key_prefix, is_operator)
            VALUES (%s, %s, %s, %s, %s) RETURNING *
            """,
            [tenant_id or None, name, hash_token(token), token[:DISPLAY_PREFIX_CHARS], operator],
        ).fetchone()
        assert row is not None
        return token, ApiKey.from_row(row)

    def list(self, tenant_id: str | None = None, *, include_revoked: bool = False) -> list[ApiKey]:
        rows = self.execute(
            """
            SELECT * FROM export_api_keys
            WHERE (%(t)s::text IS NULL OR tenant_id = %(t)s) AND (%(all)s OR revoked_at IS NULL)
            ORDER BY created_at, id
            """,
            {"t": tenant_id, "all": include_revoked},
        ).fetchall()
        return [ApiKey.from_row(r) for r in rows]

    def revoke(self, key: str) -> int:
        """Revoke by id or by displayed prefix; returns how many keys were revoked."""
        if key.isdigit():
            cur = self.execute(
                "UPDATE export_api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
                [int(key)],
            )
        else:
            cur = self.execute(
                "UPDATE export_api_keys SET revoked_at = now() WHERE key_prefix = %s AND revoked_at IS NULL",
                [key],
            )
        return cur.rowcount

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key for `token` (None: unknown or revoked). Notes the use at most once a minute,
        so that 50 concurrent requests of one key never queue on its row lock."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        row = self.execute(
            "SELECT *, (last_used_at IS NULL OR last_used_at < now() - interval '1 minute') AS stale "
            "FROM export_api_keys WHERE key_hash = %s AND revoked_at IS NULL",
            [hash_token(token)],
        ).fetchone()
        if row is None:
            return None
        if row["stale"]:
            self.execute(
                "UPDATE export_api_keys SET last_used_at = now() WHERE id = %s "
                "AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
                [row["id"]],
            )
        return ApiKey.from_row(row)

    def live(self, key_id: int) -> tuple[ApiKey, str] | None:
        """A key that is not revoked, by id, with its stored hash (what event-stream tokens are signed
        with); None when there is no such live key."""
        row = self.execute(
            "SELECT * FROM export_api_keys WHERE id = %s AND revoked_at IS NULL", [key_id]
        ).fetchone()
        return (ApiKey.from_row(row), row["key_hash"]) if row else None
