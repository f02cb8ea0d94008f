"""The `export_refusals` table's only SQL: how many requests each cap refused, so the metrics
(`export-pipelines metrics`) can count refusals that leave no request row behind, across restarts
and across every process that refuses (API workers, the command line, run workers)."""

from __future__ import annotations

from export_pipelines.core.storage.pg_store import PgStore

# Over the tenant's cap of active (pending, queued, running) exports, at insert.
TENANT_ACTIVE_CAP = "tenant_active_cap"
# A PDF request matching more rows than a PDF may hold, when its rows were counted.
PDF_ROWS = "pdf_rows"
REASONS = (TENANT_ACTIVE_CAP, PDF_ROWS)


class RefusalStore(PgStore):
    """Counters per refusal reason; each method is one statement."""

    def record(self, reason: str) -> None:
        """One more refusal for `reason` (one of REASONS)."""
        if reason not in REASONS:
            raise ValueError(f"reason: must be one of {', '.join(REASONS)}, got {reason!r}")
        self.execute(
            """
            INSERT INTO export_refusals (reason, refused) VALUES (%s, 1)
            ON CONFLICT (reason) DO UPDATE
                SET refused = export_refusals.refused + 1, last_at = now()
            """,
            [reason],
        )

    def counts(self) -> dict[str, int]:
        """Refusals so far per reason; every reason is present (0 when none was refused)."""
        got = {r: int(n) for r, n in self.execute("SELECT reason, refused FROM export_refusals").fetchall()}
        return {reason: got.get(reason, 0) for reason in REASONS} | got
