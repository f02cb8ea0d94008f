# ruff: noqa: RUF001 - the ambiguous characters are the point of the demo data
"""Deterministic demo data for the packaged catalog: `tenants` and `orders`.

Rows are generated server-side with `generate_series` so 10M rows take seconds, not minutes,
and every value is a pure function of the row number (re-running gives the same bytes).
Every row class carries values that break naive exporters: separators, quotes, CR/LF, tabs,
backslashes, non-ASCII and emoji, NULL next to empty string, jsonb, numeric(12,2), timestamptz.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS public.tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    plan        text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS public.orders (
    tenant_id       text NOT NULL REFERENCES public.tenants (id),
    id              bigint NOT NULL,
    created_at      timestamptz NOT NULL,
    status          text NOT NULL,
    amount          numeric(12, 2),
    currency        text NOT NULL,
    customer_email  text,
    note            text,
    attrs           jsonb,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX IF NOT EXISTS orders_tenant_created_idx ON public.orders (tenant_id, created_at);
"""

# Awkward text, cycled through by row number. Index 0 is the empty string on purpose.
NASTY_NOTES: tuple[str, ...] = (
    "",
    "plain note",
    'comma, and "double quotes"',
    "line one\nline two",
    "carriage\r\nreturn and\rlone CR",
    "tab\tseparated\tvalue",
    "back\\slash \\N and \\\\ twice",
    "naïve café – Zürich – 東京 – Ωμέγα",
    "emoji 🚀🔥 and ZWJ 👩‍💻",
    '=HYPERLINK("http://x")',
    "NULL",
    " leading and trailing spaces ",
    "'single' and `backtick`; DROP TABLE orders; --",
    "\u200b zero-width and \u202e bidi override",
)
STATUSES: tuple[str, ...] = ("pending", "paid", "shipped", "refunded", "cancelled")
CURRENCIES: tuple[str, ...] = ("EUR", "USD", "GBP", "JPY")
BIG_TENANT = "t-big"


@dataclass(frozen=True)
class DemoSize:
    """How many rows to make: one big tenant plus `small_tenants` sharing `small_rows`."""

    big_rows: int = 20_000
    small_rows: int = 10_000
    small_tenants: int = 30

    @property
    def total(self) -> int:
        return self.big_rows + self.small_rows


def tenant_ids(size: DemoSize) -> list[str]:
    return [BIG_TENANT] + [f"t-{i:03d}" for i in range(1, size.small_tenants + 1)]


def create_schema(conn: psycopg.Connection) -> None:
    conn.execute(SCHEMA_SQL)


def _array_literal(values: tuple[str, ...]) -> sql.Composable:
    return sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(v) for v in values))


def load_demo_data(conn: psycopg.Connection, size: DemoSize = DemoSize()) -> int:
    """(Re)create the demo rows. Returns the number of orders rows. Idempotent."""
    if size.small_tenants < 1 and size.small_rows:
        raise ValueError("small_rows needs small_tenants >= 1")
    create_schema(conn)
    with conn.transaction():
        conn.execute("TRUNCATE public.orders, public.tenants")
        conn.execute(
            """
            INSERT INTO public.tenants (id, name, plan, created_at)
            SELECT CASE WHEN g = 0 THEN %(big)s ELSE 't-' || lpad(g::text, 3, '0') END,
                   CASE WHEN g = 0 THEN 'Big Corp' ELSE 'Tenant ' || g END,
                   CASE WHEN g = 0 OR g %% 5 = 0 THEN 'enterprise' WHEN g %% 2 = 0 THEN 'pro' ELSE 'free' END,
                   timestamptz '2023-01-01 00:00:00+00' + g * interval '1 day'
            FROM generate_series(0, %(n)s) AS g
            """,
            {"big": BIG_TENANT, "n": size.small_tenants},
        )
        # Row g (1-based, globally unique id). The first big_rows rows are interleaved with the
        # small tenants' rows so the big tenant's keys are not one contiguous range.
        # Small tenants get skewed sizes: tenant k is picked with weight ~ 1/k.
        query = sql.SQL(
            """
            INSERT INTO public.orders
                (tenant_id, id, created_at, status, amount, currency, customer_email, note, attrs)
            SELECT
                tenant,
                g,
                timestamptz '2024-01-01 00:00:00+00'
                    + ((g * 7919) %% 63072000) * interval '1 second'
                    + ((g %% 1000) * interval '1 microsecond'),
                ({statuses})[1 + (g * 31) %% {n_status}],
                CASE WHEN g %% 97 = 0 THEN NULL
                     ELSE round(((g * 104729) %% 2000000001)::numeric / 100 - 10000000, 2) END,
                ({currencies})[1 + (g * 17) %% {n_cur}],
                CASE WHEN g %% 11 = 0 THEN NULL
                     WHEN g %% 11 = 1 THEN ''
                     ELSE 'customer' || g || '@example.com' END,
                CASE WHEN g %% 13 = 0 THEN NULL
                     ELSE ({notes})[1 + g %% {n_notes}]
                          || CASE WHEN g %% 3 = 0 THEN ' #' || g ELSE '' END END,
                CASE WHEN g %% 17 = 0 THEN NULL
                     ELSE jsonb_build_object(
                        'n', g,
                        'vip', g %% 2 = 0,
                        'tags', jsonb_build_array('a', 'b,c', ({notes})[1 + g %% {n_notes}]),
                        'price', ((g %% 1000)::numeric / 7)::numeric(20, 10)) END
            FROM (
                SELECT g,
                       CASE WHEN {n_small} = 0 OR (g %% {period}) < {big_share}
                            THEN {big}
                            ELSE 't-' || lpad((1 + floor({n_small} * power(
                                ((g * 2654435761) %% 1000003)::float8 / 1000003, 2)))::int::text, 3, '0')
                       END AS tenant
                FROM generate_series(1::bigint, {total}::bigint) AS g
            ) AS s
            """
        ).format(
            statuses=_array_literal(STATUSES),
            n_status=sql.Literal(len(STATUSES)),
            currencies=_array_literal(CURRENCIES),
            n_cur=sql.Literal(len(CURRENCIES)),
            notes=_array_literal(NASTY_NOTES),
            n_notes=sql.Literal(len(NASTY_NOTES)),
            n_small=sql.Literal(size.small_tenants),
            big=sql.Literal(BIG_TENANT),
            **_interleave(size),
        )
        conn.execute(query, {})
    conn.execute("ANALYZE public.orders")
    conn.execute("ANALYZE public.tenants")
    row = conn.execute("SELECT count(*) FROM public.orders").fetchone()
    return int(row[0]) if row else 0


def _interleave(size: DemoSize) -> dict[str, sql.Composable]:
    """Choose `period`/`big_share` so about big_rows of every `total` rows go to the big tenant."""
    total = size.total
    period = 1000
    big_share = round(period * size.big_rows / total) if total else period
    return {
        "period": sql.Literal(period),
        "big_share": sql.Literal(big_share),
        "total": sql.Literal(total),
    }
