"""SQL expressions that render one column for a text format, so PostgreSQL does the per-value work.

Each function takes a column and returns an expression over it (NULL stays NULL):
- `base64_of`: bytea as unwrapped base64 (every text format);
- `excel_csv`: the CSV `excel` profile (formula injection neutralised, numbers Excel would round as
  `="…"`);
- `xlsx_tagged`: a one-letter type tag and the value, which the XLSX encoder turns into a cell;
- `json_value`: what `row_to_json` should see (base64 for bytea, json without raw line breaks).
"""

from __future__ import annotations

from psycopg import sql

from export_pipelines.core.columns import ColumnInfo
from export_pipelines.core.engine.encoders.type_contract import category

# Excel keeps 15 significant digits; its numbers stop near 1e-307 / 1e308.
EXCEL_DIGITS = 15
EXCEL_MAX_INTEGER = 10**EXCEL_DIGITS - 1
EXCEL_TINY = "1e-300"
# Text Excel's CSV import turns into a number (spaces around it are ignored).
EXCEL_NUMBER_TEXT = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"
# Cells starting with these characters are formulas (or become one) in spreadsheet programs.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# What spreadsheet programs skip, trim or do not show before a formula: whitespace (NBSP, U+3000
# and the other Unicode spaces), controls, and invisible format characters (zero-width space and
# joiners, bidi marks/embeddings/isolates, word joiner, soft hyphen, byte order mark, Hangul
# fillers). The inside of a PostgreSQL bracket expression.
FORMULA_LEAD = (
    "[:space:]\u0001-\u001f\u007f-\u00a0\u00ad\u034f\u061c\u115f\u1160\u1680\u180e"
    "\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000\u3164\ufeff\uffa0"
)
# Formula starts, with the fullwidth (U+FF1D U+FF0B U+FF0D U+FF20), small (U+FE66 U+FE62 U+FE63
# U+FE6B) and minus-sign (U+2212) forms that East Asian input methods type and some spreadsheet
# programs read as = + - @. '-' last: it would otherwise make a range.
FORMULA_CHARS = "=+@\uff1d\uff0b\uff0d\uff20\ufe66\ufe62\ufe63\ufe6b\u2212-"
# Text whose first visible character is a formula start.
HIDDEN_FORMULA_TEXT = f"^[{FORMULA_LEAD}]*[{FORMULA_CHARS}]"
# Dates Excel shows as dates: serial 61 onwards (1900-03-01; before it Excel's 1900 leap-year
# bug shifts serials), up to its last date.
EXCEL_FIRST_DATE = "1900-03-01"
EXCEL_LAST_DATE = "9999-12-31"
EXCEL_EPOCH = "1899-12-30"


def column_ref(col: ColumnInfo) -> sql.Composable:
    return sql.Identifier(col.name)


def base64_of(expr: sql.Composable) -> sql.Composable:
    # encode() wraps base64 every 76 characters; a cell wants one line.
    return sql.SQL("translate(encode({}, 'base64'), E'\\n', '')").format(expr)


def as_text(col: ColumnInfo) -> sql.Composable:
    """The column as PostgreSQL's text output (what COPY writes), bytea as base64."""
    c = column_ref(col)
    if col.type_name == "bytea":
        return base64_of(c)
    if col.type_name == "bool":
        # bool::text says true/false; COPY (the output function) says t/f.
        return sql.SQL("CASE WHEN {c} THEN 't' WHEN NOT {c} THEN 'f' END").format(c=c)
    if col.type_name == "bpchar":
        # A cast to text drops char(n)'s padding; concat() uses the output function, as COPY does.
        return sql.SQL("CASE WHEN {c} IS NOT NULL THEN concat({c}) END").format(c=c)
    return sql.SQL("{}::text").format(c)


def _significant_digits(text: sql.Composable) -> sql.Composable:
    # Digits of the mantissa without sign, point and leading zeros (NaN/Infinity count 3/8).
    return sql.SQL("length(ltrim(translate(split_part({t}, 'e', 1), '-.', ''), '0'))").format(t=text)


def number_is_exact_in_excel(col: ColumnInfo) -> sql.Composable:
    """True when Excel shows and keeps the number exactly as PostgreSQL wrote it."""
    c, kind = column_ref(col), category(col)
    if kind == "integer":
        return sql.SQL("TRUE")
    if kind == "bigint":
        return sql.SQL("{c} BETWEEN {lo} AND {hi}").format(
            c=c, lo=sql.Literal(-EXCEL_MAX_INTEGER), hi=sql.Literal(EXCEL_MAX_INTEGER)
        )
    text = sql.SQL("{}::text").format(c)
    return sql.SQL(
        "({t} ~ '^-?[0-9]' AND {digits} <= {max_digits} AND {t} <> '-0' "
        "AND NOT ({c} <> 0 AND abs({c}) < {tiny}))"
    ).format(
        t=text,
        digits=_significant_digits(text),
        max_digits=sql.Literal(EXCEL_DIGITS),
        c=c,
        tiny=sql.SQL(EXCEL_TINY),
    )


def excel_csv(col: ColumnInfo) -> sql.Composable:
    """One column of the CSV `excel` profile."""
    kind, c = category(col), column_ref(col)
    if kind == "integer" or kind == "boolean":
        return c
    if kind in ("bigint", "numeric", "decimal", "float"):
        # NaN / Infinity are text to Excel anyway; the rest either stays a number or becomes
        # the formula ="digits", which Excel shows as that text instead of rounding it.
        return sql.SQL("CASE WHEN {exact} THEN {t} ELSE '=\"' || {t} || '\"' END").format(
            exact=number_is_exact_in_excel(col), t=sql.SQL("{}::text").format(c)
        )
    text = as_text(col)
    # Text that Excel would read as a number (a JSON number, "00123", a 20-digit account
    # number) stays text: Excel would drop its leading zeros or round it.
    return sql.SQL(
        "CASE WHEN {formula} THEN '''' || {t} WHEN {t} ~ {number} THEN '=\"' || {t} || '\"' ELSE {t} END"
    ).format(formula=formula_text(text), t=text, number=sql.Literal(EXCEL_NUMBER_TEXT))


def formula_text(text: sql.Composable) -> sql.Composable:
    """True for the text values the excel profile prefixes with `'` (the others stay as they are,
    or become `="…"` when Excel would read them as a number):
    - the first character is = + - @, tab or CR;
    - or, unless Excel reads the value as a number (` -5` becomes `=" -5"`, safe as it is), the
      first character that is not whitespace, a control or invisible is a formula start, in its
      ASCII, fullwidth or small form (` =1+1`, LF then `=`, NBSP/U+200B/BOM then `=`, U+FF1D).
    special_values counts FORMULA_TEXT with this same predicate."""
    starts = sql.SQL(", ").join(sql.Literal(s) for s in FORMULA_STARTS)
    return sql.SQL("(left({t}, 1) IN ({starts}) OR ({t} !~ {number} AND {t} ~ {hidden}))").format(
        t=text,
        starts=starts,
        number=sql.Literal(EXCEL_NUMBER_TEXT),
        hidden=sql.Literal(HIDDEN_FORMULA_TEXT),
    )


# XLSX cell tags: the encoder reads the first character of each rendered value.
TAG_NUMBER, TAG_TEXT, TAG_BOOL, TAG_DATE = "n", "s", "b", "d"


def xlsx_tagged(col: ColumnInfo) -> sql.Composable:
    """'n<number>', 's<text>', 'b1'/'b0' or 'd<Excel serial>'; NULL stays NULL (an empty cell)."""
    kind, c = category(col), column_ref(col)
    if kind == "integer":
        return sql.SQL("'n' || {}::text").format(c)
    if kind in ("bigint", "numeric", "decimal", "float"):
        return sql.SQL("CASE WHEN {exact} THEN 'n' ELSE 's' END || {c}::text").format(
            exact=number_is_exact_in_excel(col), c=c
        )
    if kind == "boolean":
        return sql.SQL("CASE WHEN {c} THEN 'b1' WHEN NOT {c} THEN 'b0' END").format(c=c)
    if kind == "date":
        return sql.SQL(
            "CASE WHEN {c} BETWEEN DATE {first} AND DATE {last} THEN 'd' || ({c} - DATE {epoch})::text "
            "ELSE 's' || {c}::text END"
        ).format(
            c=c,
            first=sql.Literal(EXCEL_FIRST_DATE),
            last=sql.Literal(EXCEL_LAST_DATE),
            epoch=sql.Literal(EXCEL_EPOCH),
        )
    return sql.SQL("'s' || {}").format(as_text(col))


# The JSON rule (type contract): a value is a JSON number only where every default reader
# (Python's json.loads, JavaScript's JSON.parse, pandas' read_json) reads every value of the type
# exactly, and a column never mixes numbers and strings. smallint and integer qualify. bigint and
# numeric do not (doubles stop at 2^53 and 17 digits), nor do real and double precision: pandas'
# JSON number parser reads 5e-324 as 0 (and with precise_float=True refuses the file) and
# 1.7976931348623157e308 a few units off, json.loads reads -0 as the integer 0, and JSON has no
# NaN or Infinity. So those four are strings of PostgreSQL's exact text for the whole column (as
# BigQuery's JSON export and Twitter's id_str do for 64-bit integers): float() / Number() /
# pandas' own string-to-float conversion read float text exactly, NaN, ±Infinity and -0 included.
JSON_STRING_TYPES = frozenset({"int8", "numeric", "float4", "float8"})


def json_value(col: ColumnInfo) -> sql.Composable:
    """What row_to_json gets for the column: PostgreSQL's JSON rendering, except bytea (base64),
    json (raw CR/LF can only be whitespace between tokens: they become spaces, so each object stays
    on one line; key order and duplicate keys are kept), and numbers (the JSON rule above)."""
    c = column_ref(col)
    if col.type_name == "bytea":
        return base64_of(c)
    if col.type_name == "json":
        return sql.SQL("translate({}::text, E'\\r\\n', '  ')::json").format(c)
    if col.type_name in JSON_STRING_TYPES:
        return sql.SQL("{}::text").format(c)
    if col.type_name.startswith("_") and col.type_name[1:] in JSON_STRING_TYPES:
        return sql.SQL("{}::text[]").format(c)  # the elements as strings, same rule
    return c
