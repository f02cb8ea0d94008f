"""Counting special values: per file and column, how many values fell under each key of the
column's `special_values` rule (type_contract.py), for the manifest's `files[].special_values`.

PostgreSQL counts them, in SQL, once per file at the end of its read, in the transaction (the
snapshot) the file was read in (`sources.PgCsvSource.count_file`): the COPY bytes stay exactly
PostgreSQL's, no value is parsed in Python, and the count sees the same rows as the read. The
count looks only at rows matching one of the predicates, so an index on the column (the time
column's) answers it without reading the heap. Only columns with a countable key get a counter.
PDF's wrapped-lines cut depends on the page layout: the PDF encoder counts it itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import sql

from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.engine.encoders import type_contract as tc
from export_pipelines.core.engine.encoders.render_sql import (
    EXCEL_NUMBER_TEXT,
    as_text,
    column_ref,
    formula_text,
    number_is_exact_in_excel,  # the excel profile's own test: counts match what is written
)
from export_pipelines.core.engine.encoders.type_contract import category, rule_for

# Counted by an encoder, not in SQL (the PDF layout decides how many lines a cell wraps to).
ENCODER_COUNTED = frozenset({tc.PDF_MANY_LINES})
# The first instant Arrow's int64 microseconds cannot hold (ADBC wraps it; Parquet writes null).
ARROW_LAST_INSTANT = "294247-01-10 04:00:54.775807"
# Families whose text can never reach PDF's cell cut (digits, dates, uuids, booleans...).
_SHORT_FAMILIES = frozenset(
    {
        "integer",
        "bigint",
        "decimal",
        "float",
        "boolean",
        "date",
        "time",
        "timestamp",
        "timestamptz",
        "interval",
        "uuid",
    }
)


@dataclass(frozen=True)
class Counter:
    column: str
    key: str
    predicate: sql.Composable  # true for the values this key counts (NULL counts as false)


def counters(columns: Iterable[ColumnInfo], fmt: str) -> list[Counter]:
    """The SQL counters of an export: one per column and countable key of its rule in `fmt`."""
    out = []
    for col in columns:
        for key in rule_for(col).special_values(fmt):
            if key in ENCODER_COUNTED:
                continue
            predicate = _predicate(col, key, tc.FORMAT_COLUMN[fmt])
            if predicate is not None:
                out.append(Counter(col.name, key, predicate))
    return out


def as_counts(found: Iterable[Counter], values: Iterable[int]) -> dict[str, dict[str, int]]:
    """{column: {key: count}} without zero counts (and without columns that have none)."""
    out: dict[str, dict[str, int]] = {}
    for counter, value in zip(found, values, strict=True):
        if value:
            out.setdefault(counter.column, {})[counter.key] = int(value)
    return out


def add_counts(total: dict[str, dict[str, int]], more: dict[str, dict[str, int]]) -> None:
    for column, keys in more.items():
        into = total.setdefault(column, {})
        for key, value in keys.items():
            into[key] = into.get(key, 0) + value


def aggregates(found: list[Counter]) -> sql.Composable:
    """`count(*) FILTER (WHERE …)` for each counter, in order."""
    return sql.SQL(", ").join(sql.SQL("count(*) FILTER (WHERE {})").format(c.predicate) for c in found)


def _lit(value: str) -> sql.Composable:
    return sql.Literal(value)


def _predicate(col: ColumnInfo, key: str, fmt: str) -> sql.Composable | None:
    c, kind = column_ref(col), category(col)
    typed = sql.SQL("{}::{}").format  # a literal of the column's own type, so indexes/compare stay exact
    # format_type() output, from PostgreSQL; numeric(p,s) without its typmod, which rejects Infinity.
    pg_type = sql.SQL("numeric" if col.type_name == "numeric" else col.pg_type)  # type: ignore[arg-type]

    def neg_zero() -> sql.Composable:
        # -0 = 0 in PostgreSQL: only the text tells them apart (cast only the zeros).
        return sql.SQL("({c} = 0 AND left({c}::text, 1) = '-')").format(c=c)

    if key in (tc.NAN, tc.INFINITY, tc.MINUS_INFINITY):
        # PostgreSQL's NaN equals NaN (unlike IEEE), so a plain comparison finds it.
        return sql.SQL("{} = {}").format(c, typed(_lit(key), pg_type))
    if key == tc.MINUS_ZERO:
        return neg_zero()
    if key in (tc.EXCEL_ROUNDED, tc.EXCEL_ROUNDED_INT):
        # What the excel profile turns into ="…" / a text cell, less the words counted on their own.
        others = [] if kind == "bigint" else [sql.SQL("{} <> 'NaN'").format(c)]
        if kind in ("numeric", "float"):
            others += [sql.SQL("{} NOT IN ('Infinity', '-Infinity')").format(c)]
        if kind == "float":
            others.append(sql.SQL("NOT {}").format(neg_zero()))
        return sql.SQL(" AND ").join([sql.SQL("NOT {}").format(number_is_exact_in_excel(col)), *others])
    if key in (tc.DATE_INFINITY, tc.DATE_MINUS_INFINITY):
        return sql.SQL("{} = {}").format(c, typed(_lit(key), pg_type))
    if key == tc.YEARS_OUTSIDE:
        # Year boundaries in UTC for timestamptz: the zone every export writes instants in.
        time = {"date": "", "timestamp": " 00:00", "timestamptz": " 00:00+00"}[kind]
        years = sql.SQL("(isfinite({c}) AND ({c} < {lo} OR {c} >= {hi}))").format(
            c=c, lo=typed(_lit("0001-01-01" + time), pg_type), hi=typed(_lit("10000-01-01" + time), pg_type)
        )
        if fmt == "parquet" and kind != "date":
            return sql.SQL("({} AND NOT {})").format(years, _beyond_arrow(col))
        return years
    if key == tc.BEYOND_ARROW:
        return _beyond_arrow(col)
    if key == tc.BEFORE_EXCEL_DATES:
        return sql.SQL("({c} >= DATE '0001-01-01' AND {c} < DATE '1900-03-01')").format(c=c)
    if key in (tc.FORMULA_TEXT, tc.NUMBER_TEXT):
        text = as_text(col)
        starts = formula_text(text)  # the excel profile's own test (hidden formula starts too)
        if key == tc.FORMULA_TEXT:
            return starts
        # The excel profile checks the formula start first: a value falls under one rule only.
        return sql.SQL("(NOT {s} AND {t} ~ {n})").format(s=starts, t=text, n=_lit(EXCEL_NUMBER_TEXT))
    if key == tc.JSON_NULL:
        return sql.SQL("{f}({c}) = 'null'").format(
            f=sql.SQL("jsonb_typeof" if col.type_name == "jsonb" else "json_typeof"), c=c
        )
    if key == tc.MULTI_DIMENSIONAL:
        return sql.SQL("array_ndims({}) > 1").format(c)
    if key == tc.LOWER_BOUND:
        if fmt == "parquet":  # multi-dimensional values are null there: counted under their own key
            return sql.SQL("(array_lower({c}, 1) <> 1 AND array_ndims({c}) = 1)").format(c=c)
        return sql.SQL("array_lower({}, 1) <> 1").format(c)
    if key == tc.XLSX_LONG_TEXT:
        return _longer_than(col, tc.XLSX_MAX_CELL_CHARS, utf16=True)
    if key == tc.PDF_LONG_TEXT:
        return None if kind in _SHORT_FAMILIES else _longer_than(col, tc.PDF_MAX_CELL_CHARS, utf16=False)
    raise ValueError(f"special value key {key!r} of column {col.name!r} has no counter; add one here")


def _beyond_arrow(col: ColumnInfo) -> sql.Composable:
    tz = "+00" if category(col) == "timestamptz" else ""
    return sql.SQL("(isfinite({c}) AND {c} > {last}::{t})").format(
        c=column_ref(col),
        last=_lit(ARROW_LAST_INSTANT + tz),
        t=sql.SQL(col.pg_type),  # type: ignore[arg-type]
    )


def _longer_than(col: ColumnInfo, limit: int, *, utf16: bool) -> sql.Composable:
    """The value's text (as the format writes it) is longer than `limit` characters, or, with
    `utf16`, UTF-16 units (Excel's unit: characters beyond U+FFFF count twice)."""
    c = column_ref(col)
    if col.type_name == "bytea":
        # base64 of n bytes is 4*ceil(n/3) ASCII characters: no need to encode it to count it.
        return sql.SQL("4 * ((octet_length({c}) + 2) / 3) > {n}").format(c=c, n=sql.Literal(limit))
    text = as_text(col)
    if not utf16:
        return sql.SQL("char_length({t}) > {n}").format(t=text, n=sql.Literal(limit))
    # Only text longer than half the limit can pass it: the regex runs on those alone.
    return sql.SQL(
        "(char_length({t}) > {n} OR (char_length({t}) > {half} AND char_length({t}) + "
        "char_length(regexp_replace({t}, '[^\\U00010000-\\U0010FFFF]', '', 'g')) > {n}))"
    ).format(t=text, n=sql.Literal(limit), half=sql.Literal(limit // 2))
