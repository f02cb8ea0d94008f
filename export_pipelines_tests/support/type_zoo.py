# ruff: noqa: RUF001 - the ambiguous characters are the point of this table
"""`type_zoo`: one table holding every PostgreSQL type of the type contract (docs/formats.md), with the
values that break exporters, spread over several tenants.

Every column cycles through its own list of SQL literals (lists have different lengths, so rows
mix them); each tenant gets enough rows that every literal appears for every tenant.
"""

from __future__ import annotations

from typing import Any

import psycopg

from export_pipelines.core.requests.catalog import Catalog, parse_catalog

TENANTS = ("z-1", "z-2", "z-3")
OTHER_TENANT = "z-other"  # rows that must never appear in the tenants' exports
ROWS_PER_TENANT = 40

SCHEMA = """
DROP TABLE IF EXISTS public.type_zoo;
DROP TYPE IF EXISTS public.zoo_mood;
CREATE TYPE public.zoo_mood AS ENUM ('sad', 'ok', 'happy 😀', '=1+1');
CREATE TABLE public.type_zoo (
    tenant_id       text NOT NULL,
    id              bigint NOT NULL,
    c_smallint      smallint,
    c_integer       integer,
    c_bigint        bigint,
    c_numeric       numeric,
    c_decimal       numeric(20, 6),
    c_numeric_wide  numeric(60, 30),
    c_real          real,
    c_double        double precision,
    c_boolean       boolean,
    c_text          text,
    c_char          char(5),
    c_date          date,
    c_time          time,
    c_timestamp     timestamp,
    c_timestamptz   timestamptz,
    c_interval      interval,
    c_uuid          uuid,
    c_jsonb         jsonb,
    c_json          json,
    c_int_array     integer[],
    c_text_array    text[],
    c_bytea         bytea,
    c_enum          public.zoo_mood,
    PRIMARY KEY (tenant_id, id)
);
"""

BIG_TEXT = "repeat('x', 100000)"  # a 100 KB cell
# 60,000 UTF-16 units: over Excel's 32,767-character cell limit, emoji at the cut.
LONG_UNICODE = "repeat('é🚀', 20000)"

VALUES: dict[str, list[str]] = {
    "c_smallint": ["-32768", "32767", "0", "NULL", "-1"],
    "c_integer": ["-2147483648", "2147483647", "0", "NULL", "42"],
    "c_bigint": [
        "-9223372036854775808",
        "9223372036854775807",
        "999999999999999",
        "1000000000000000",
        "-1000000000000000",
        "0",
        "NULL",
        "12345",
    ],
    "c_numeric": [
        "'NaN'",
        "'Infinity'",
        "'-Infinity'",
        "0",
        "'-0.000'",
        "'1e-100'",
        "'123456789012345678901234567890.123456789012345678901234567890'",
        "'1e100'",
        "'0.1'",
        "'-12.50'",
        "NULL",
        "'123456789012345'",
        "'1234567890123456'",
        "'1e-400'",
    ],
    "c_decimal": [
        "'NaN'",
        "'12345678901234.123456'",
        "'-0.000001'",
        "0",
        "NULL",
        "'1.5'",
        "'-99999999999999.999999'",
    ],
    "c_numeric_wide": [
        "'123456789012345678901234567890.123456789012345678901234567890'",
        "'NaN'",
        "'-1e-30'",
        "NULL",
        "'7'",
    ],
    "c_real": [
        "'NaN'",
        "'Infinity'",
        "'-Infinity'",
        "'-0'",
        "'1.1'",
        "'3.4028235e38'",
        "'1e-45'",
        "NULL",
        "'0.1'",
    ],
    "c_double": [
        "'NaN'",
        "'Infinity'",
        "'-Infinity'",
        "'-0'",
        "'0.1'",
        "'0.30000000000000004'",
        "'1.7976931348623157e308'",
        "'5e-324'",
        "'123456789012345680000'",
        "NULL",
        "'2.5'",
        "'-1e-300'",
    ],
    "c_boolean": ["true", "false", "NULL"],
    "c_text": [
        "''",
        "NULL",
        "'plain'",
        """'comma, and "double quotes"'""",
        "E'line one\\nline two'",
        "E'cr\\r\\nlf and lone\\rcr'",
        "E'tab\\tseparated'",
        "E'back\\\\slash \\\\N and \\\\\\\\ twice'",
        "E'\\\\N'",
        "'NULL'",
        "E'\\u200b zero-width \\u202e bidi \\u2066isolate\\u2069'",
        "'emoji 🚀 and ZWJ 👩‍💻'",
        "'=SUM(A1:A2)'",
        "'+1'",
        "'-1'",
        "'@cmd'",
        "E'\\tstarts with a tab'",
        "E'\\rstarts with CR'",
        "' leading and trailing spaces '",
        BIG_TEXT,
        LONG_UNICODE,
        "'_x0041_ looks like an Excel escape'",
        "E'control \\u0001 character'",
        "'ü <tag> & ampersand'",
        "'\"'",
        "','",
        "E'\\n'",
        "'naïve café – Zürich – 東京'",
    ],
    "c_char": ["'ab'", "NULL", "''", "'abcde'"],
    "c_date": [
        "'2024-02-29'",
        "'0001-01-01'",
        "'0001-01-01 BC'",
        "'0044-03-15 BC'",
        "'9999-12-31'",
        "'10000-01-01'",
        "'infinity'",
        "'-infinity'",
        "'1900-01-01'",
        "'1900-03-01'",
        "NULL",
    ],
    "c_time": ["'00:00'", "'23:59:59.999999'", "'12:34:56.5'", "NULL", "'24:00:00'"],
    "c_timestamp": [
        "'2024-01-01 01:02:03.000004'",
        "'0001-01-01 00:00:00 BC'",
        "'0044-03-15 12:00:00 BC'",
        "'10000-01-01 00:00:00'",
        "'294276-12-31 23:59:59'",
        "'infinity'",
        "'-infinity'",
        "NULL",
        "'1999-12-31 23:59:59.999999'",
    ],
    "c_timestamptz": [
        "'2024-01-01 01:02:03.000004+05:30'",
        "'0001-01-01 00:00:00+00 BC'",
        "'infinity'",
        "'-infinity'",
        "'12345-06-07 08:09:10Z'",
        "'1970-01-01 00:00:00Z'",
        "NULL",
    ],
    "c_interval": [
        "'1 year 2 months 3 days 04:05:06.789'",
        "'-1 day'",
        "'0'",
        "'178000000 years'",
        "'-00:00:00.000001'",
        "NULL",
    ],
    "c_uuid": ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "NULL", "'00000000-0000-0000-0000-000000000000'"],
    "c_jsonb": [
        """'{"a": 1, "b": [1, 2.5, null], "c": "x\\"y\\\\n", "d": {"e": "🚀"}}'""",
        "'[]'",
        """'"just a string"'""",
        "'null'",
        "'12345678901234567890.5'",
        "NULL",
    ],
    "c_json": [
        """E'{"b":\\n 2, "b": 3}'""",
        "'  [1, 2]  '",
        """E'{\\r\\n"x": "y"}'""",
        "NULL",
        "'1.000000000000000000001'",
    ],
    "c_int_array": ["'{1,NULL,3}'", "'{}'", "NULL", "'{{1,2},{3,4}}'"],
    "c_text_array": ["""'{"a,b","\\"q\\"",NULL,"NULL",""}'""", "'{}'", "NULL", "'{=cmd}'"],
    "c_bytea": ["'\\x'", "'\\x00ff10'", "'\\xf8ff'", "NULL", "decode(repeat('ab', 3000), 'hex')"],
    "c_enum": ["'sad'", "'ok'", "'happy 😀'", "NULL", "'=1+1'"],
}
COLUMNS = ("id", "tenant_id", *VALUES)


def catalog() -> Catalog:
    return parse_catalog(
        {
            "resources": {
                "type_zoo": {
                    "table": "public.type_zoo",
                    "tenant_column": "tenant_id",
                    "key": "id",
                    "columns": list(COLUMNS),
                }
            }
        },
        "type_zoo catalog",
    )


def load(conn: psycopg.Connection[Any]) -> None:
    """(Re)create the table; every tenant gets ROWS_PER_TENANT rows, keys interleaved."""
    conn.execute(SCHEMA)
    names = list(VALUES)
    for t, tenant in enumerate((*TENANTS, OTHER_TENANT)):
        rows = []
        for i in range(ROWS_PER_TENANT):
            key = str(i * 10 + t)  # the tenants' keys interleave
            values = [VALUES[n][(i + t) % len(VALUES[n])] for n in names]
            rows.append(f"('{tenant}', {key}, {', '.join(values)})")
        conn.execute(
            f"INSERT INTO public.type_zoo (tenant_id, id, {', '.join(names)}) VALUES {', '.join(rows)}"
        )
