"""The type contract: how each PostgreSQL type is written in each format (docs/formats.md, the manifest).

One row per type family. `special` lists, per format, the values that format cannot hold as
they are and what is written instead; the manifest repeats the row of every exported column, so
a reader knows the rule without reading this file. The docs/formats.md table is generated from
`contract_markdown()` and a test keeps the two identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from export_pipelines.core.columns import ColumnInfo

# Format name -> the contract column it follows (jsonl and json share one rendering; csv_excel
# differs from csv only where it says so).
FORMAT_COLUMN = {
    "csv": "csv",
    "csv_excel": "csv_excel",
    "jsonl": "json",
    "json": "json",
    "parquet": "parquet",
    "xlsx": "xlsx",
    "pdf": "pdf",
}
PDF_MAX_CELL_CHARS = 1_000
PDF_MAX_CELL_LINES = 40
NUMERIC_MAX_DECIMAL_PRECISION = 38
XLSX_MAX_CELL_CHARS = 32_767
_EXCEL_TEXT = '`="…"` (shown as text, not rounded)'
_XLSX_TEXT_CUT = f"text cut to Excel's {XLSX_MAX_CELL_CHARS:,}-character cell limit"

# Special-value keys. Each names one kind of value a format does not hold as it is (or that a
# reader must look out for); the manifest lists them per column (`columns[].special_values`) and
# counts them per file under the same keys (`files[].special_values`, core/engine/encoders/special_values.py).
NAN, INFINITY, MINUS_INFINITY, MINUS_ZERO = "NaN", "Infinity", "-Infinity", "-0"
DATE_INFINITY, DATE_MINUS_INFINITY = "infinity", "-infinity"
YEARS_OUTSIDE = "years outside 1..9999 (BC, 5-digit years)"
BEYOND_ARROW = "after 294247-01-10 04:00:54 UTC (beyond Arrow's microsecond range)"
BEFORE_EXCEL_DATES = "dates from 0001-01-01 to 1900-02-28 (before Excel's dates)"
EXCEL_ROUNDED = "16+ significant digits or nonzero below 1e-300 (Excel would round them)"
EXCEL_ROUNDED_INT = "16+ digits (Excel would round them)"
FORMULA_TEXT = "text starting with = + - @ tab or CR"
NUMBER_TEXT = "text Excel would read as a number"
JSON_NULL = "the JSON value null"
LOWER_BOUND = "lower bound other than 1 ([0:2]={…})"
MULTI_DIMENSIONAL = "multi-dimensional values"
XLSX_LONG_TEXT = f"text over {XLSX_MAX_CELL_CHARS:,} characters"
PDF_LONG_TEXT = f"text over {PDF_MAX_CELL_CHARS:,} characters"
PDF_MANY_LINES = f"more than {PDF_MAX_CELL_LINES} wrapped lines"


@dataclass(frozen=True)
class TypeRule:
    family: str  # category() value
    postgres: str  # how docs/formats.md names the types
    csv: str
    csv_excel: str
    json: str
    parquet: str
    xlsx: str
    # format column -> {value that cannot be held: what is written instead}
    special: dict[str, dict[str, str]] = field(default_factory=dict)
    # PDF prints the csv text of every type (a report for people), wrapped in its cell.
    pdf: str = "as csv, wrapped; NULL is an empty cell"

    def representation(self, fmt: str) -> str:
        """The table cell, made self-contained ("as csv; …" spelled out) for the manifest."""
        text = str(getattr(self, FORMAT_COLUMN[fmt]))
        if text.startswith(_SAME):
            extra = text[len(_SAME) :].lstrip("; ,")
            label = "excel profile: " if FORMAT_COLUMN[fmt] == "csv_excel" else ""
            text = self.csv + (f"; {label}{extra}" if extra else "")
        return text

    def special_values(self, fmt: str) -> dict[str, str]:
        """Key -> what is written; the manifest counts each key per file under the same name."""
        if FORMAT_COLUMN[fmt] == "pdf":
            # PDF prints the csv text: csv's special values, and cells cut to fit a page.
            return {**self.special.get("csv", {}), **_PDF_LONG}
        return dict(self.special.get(FORMAT_COLUMN[fmt], {}))


_SAME = "as csv"
_XLSX_TEXT = f"text cell (cut at Excel's {XLSX_MAX_CELL_CHARS:,}-character limit)"
_TEXT_CELL = "text cell"


def _pandas_range(python_type: str, int_type: str) -> str:
    """What pandas' pyarrow-backed column does with values Python's date types cannot hold."""
    return (
        f'; pandas (`dtype_backend="pyarrow"`) holds every value, but those outside years 1..9999 '
        f"(BC, 5-digit years, ±infinity) are no Python {python_type} (OverflowError): read them as "
        f'integers, `.astype("{int_type}[pyarrow]")`'
    )


_EXCEL_PROFILE_TEXT = {
    FORMULA_TEXT: "a leading ' (formula injection neutralised)",
    NUMBER_TEXT: '="…" (stays text)',
}
_EXCEL_AS_TEXT = "as csv, with the text rules of the excel profile"
# JSON has one null: the json/jsonb value `null` and SQL NULL look the same in JSON and JSONL.
_JSON_NULL = {JSON_NULL: "null, the same as SQL NULL (csv, parquet, xlsx tell them apart)"}
_PDF_LONG = {
    PDF_LONG_TEXT: "cut there, ending in … (a row must fit on a page)",
    PDF_MANY_LINES: "cut there, ending in … (cut)",
}
_LONG_TEXT = {XLSX_LONG_TEXT: _XLSX_TEXT_CUT}


def _words(values: dict[str, str], how: str) -> dict[str, str]:
    """{key: how.format(value)} for number words (NaN, Infinity, ...)."""
    return {key: how.format(word) for key, word in values.items()}


_NAN = {NAN: "NaN"}
_NAN_INF = {NAN: "NaN", INFINITY: "Infinity", MINUS_INFINITY: "-Infinity"}
_NAN_INF_ZERO = {**_NAN_INF, MINUS_ZERO: "-0"}
_EXCEL_DIGITS = {EXCEL_ROUNDED: '`="…"` (text, not rounded)'}
_XLSX_DIGITS = {EXCEL_ROUNDED: "text cell with the exact digits"}


def _number_special(
    excel_words: dict[str, str], parquet: dict[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """NaN, ±Infinity and -0 where the format changes them: csv and JSON write PostgreSQL's text
    (JSON as a string, like every value of the column), Parquet holds floats natively."""
    special = {
        "csv_excel": {**_words(excel_words, '`="{}"` (text)'), **_EXCEL_DIGITS},
        "xlsx": {**_words(excel_words, 'text cell "{}"'), **_XLSX_DIGITS},
    }
    if parquet:
        special["parquet"] = parquet
    return special


def _time_special(parquet_days: bool) -> dict[str, dict[str, str]]:
    """Infinite dates/timestamps and years outside 1..9999, which Python's date types, pandas and
    Excel cannot hold, are counted in every format."""
    csv = {
        DATE_INFINITY: "`infinity`",
        DATE_MINUS_INFINITY: "`-infinity`",
        YEARS_OUTSIDE: "as PostgreSQL writes them (`0044-03-15 BC`, `12345-06-07`): no date to Python, "
        "pandas or Excel",
    }
    unit, biggest = ("days", "2147483647") if parquet_days else ("µs", "9223372036854775807")
    parquet = {
        DATE_INFINITY: f"{biggest} {unit} (DuckDB's infinity)",
        DATE_MINUS_INFINITY: f"-{biggest} {unit} (DuckDB's -infinity)",
        YEARS_OUTSIDE: "the value; pandas cannot make it a Python "
        + ("date (read as int32)" if parquet_days else "datetime (read as int64)"),
    }
    if not parquet_days:
        parquet[BEYOND_ARROW] = "null (beyond Arrow's microsecond range)"
    xlsx = {key: "text cell as in csv" for key in csv}
    if parquet_days:
        xlsx[BEFORE_EXCEL_DATES] = "text cell as in csv (Excel's dates start at 1900-03-01)"
    return {
        "csv": csv,
        "csv_excel": {**csv, DATE_MINUS_INFINITY: "`'-infinity` (the excel profile's leading ')"},
        "json": {key: f"string, {how}" for key, how in csv.items()},
        "parquet": parquet,
        "xlsx": xlsx,
    }


RULES: tuple[TypeRule, ...] = (
    TypeRule(
        "integer",
        "smallint, integer",
        "digits",
        _SAME,
        "number",
        "int16, int32",
        "number cell",
    ),
    TypeRule(
        "bigint",
        "bigint",
        "digits",
        f"digits; 16+ digits as {_EXCEL_TEXT}",
        'string of the digits `"9223372036854775807"` (doubles round beyond 2^53)',
        "int64",
        "number cell up to 15 digits, else text cell with the digits",
        {
            "csv_excel": {EXCEL_ROUNDED_INT: '`="…"` (text, not rounded)'},
            "xlsx": {EXCEL_ROUNDED_INT: "text cell with the digits"},
        },
    ),
    TypeRule(
        "decimal",
        f"numeric(p,s), p ≤ {NUMERIC_MAX_DECIMAL_PRECISION}",
        "exact digits (`12.50`), `NaN`",
        f"as csv; 16+ significant digits as {_EXCEL_TEXT}",
        'string of the exact digits `"12.50"`, `"NaN"` (doubles keep 17 digits)',
        "decimal128(p,s); NaN as null",
        "number cell up to 15 significant digits, else text cell with the exact digits",
        _number_special(_NAN, {NAN: "null (decimal128 has no NaN)"}),
    ),
    TypeRule(
        "numeric",
        f"numeric, numeric(p,s) p > {NUMERIC_MAX_DECIMAL_PRECISION}",
        "exact digits, any size (`1e-100` as `0.000…1`), `NaN`, `Infinity`, `-Infinity`",
        f"as csv; 16+ significant digits, NaN and ±Infinity as {_EXCEL_TEXT}",
        'string of the exact digits, as in csv (`"NaN"`, `"Infinity"`, `"-Infinity"`)',
        "string with PostgreSQL's exact text (never a float)",
        "number cell up to 15 significant digits, else text cell with the exact digits",
        _number_special(_NAN_INF),
    ),
    TypeRule(
        "float",
        "real, double precision",
        "shortest text that reads back to the same float (`0.1`, `1e+300`), "
        "`NaN`, `Infinity`, `-Infinity`, `-0`",
        f"as csv; 16+ significant digits, -0, NaN and ±Infinity as {_EXCEL_TEXT}",
        'string of the text in csv (`"0.1"`, `"-0"`, `"NaN"`, `"-Infinity"`): float() and '
        "Number() read it exactly, JSON numbers would not (no NaN, ±Infinity; -0 and "
        "subnormals lost by some parsers)",
        "float32, float64 (NaN, ±inf and -0 native)",
        "number cell up to 15 significant digits, else text cell (-0, NaN, ±Infinity included)",
        _number_special(_NAN_INF_ZERO),
    ),
    TypeRule("boolean", "boolean", "`t` / `f`", _SAME, "true / false", "bool", "boolean cell"),
    TypeRule(
        "text",
        "text, varchar, char(n), enum, and any other type",
        "PostgreSQL's text, RFC 4180 quoting; NULL is an empty field, `''` is `\"\"`",
        "as csv; a value starting with `=` `+` `-` `@` tab or CR gets a leading `'`; "
        'text Excel would read as a number (`00123`) as `="00123"`',
        "string (NULL is null)",
        "string",
        _XLSX_TEXT,
        {"csv_excel": _EXCEL_PROFILE_TEXT, "xlsx": _LONG_TEXT},
    ),
    TypeRule(
        "date",
        "date",
        "`2024-01-31`, `0044-03-15 BC`, `12345-06-07`, `infinity`, `-infinity`",
        _SAME,
        'string `"2024-01-31"` (BC, 5-digit years, infinity as in csv)',
        "date32; ±infinity as ±(2^31-1) days, which DuckDB reads as ±infinity"
        + _pandas_range("date", "int32"),
        "date cell from 1900-03-01 to 9999-12-31, else text cell as in csv",
        _time_special(parquet_days=True),
    ),
    TypeRule(
        "time",
        "time, timetz",
        "`01:02:03.5`, timetz with its zone",
        _SAME,
        'string `"01:02:03.5"`',
        "time64[us] (timetz: string); as a Python time (pandas) `24:00:00` is `00:00:00`",
        _TEXT_CELL,
    ),
    TypeRule(
        "timestamp",
        "timestamp (without time zone)",
        "`2024-01-31 01:02:03.000004` (naive, as stored), `… BC`, 5-digit years, `infinity`",
        _SAME,
        'string `"2024-01-31T01:02:03.000004"` (naive)',
        "timestamp[us] without zone; ±infinity as ±(2^63-1) µs, which DuckDB reads as ±infinity; "
        "years after 294246 as null" + _pandas_range("datetime", "int64"),
        "text cell as in csv (Excel has no microseconds)",
        _time_special(parquet_days=False),
    ),
    TypeRule(
        "timestamptz",
        "timestamptz",
        "UTC instant `2024-01-31 01:02:03.000004+00`, `infinity`",
        _SAME,
        'string `"2024-01-31T01:02:03.000004+00:00"` (UTC)',
        "timestamp[us, UTC]; ±infinity as ±(2^63-1) µs, which DuckDB reads as ±infinity; "
        "years after 294246 as null" + _pandas_range("datetime", "int64"),
        "text cell as in csv (UTC; Excel has no time zones)",
        _time_special(parquet_days=False),
    ),
    TypeRule(
        "interval",
        "interval",
        "ISO 8601 `P1Y2M3DT4H5M6.7S`",
        _SAME,
        "string, ISO 8601",
        "string, ISO 8601 (Parquet's interval has no microseconds)",
        _TEXT_CELL,
    ),
    TypeRule("uuid", "uuid", "`a0eebc99-9c0b-…`", _SAME, "string", "uuid (16 bytes)", _TEXT_CELL),
    TypeRule(
        "jsonb",
        "jsonb",
        'JSON text `{"a": 1}`',
        _EXCEL_AS_TEXT,
        "nested JSON value as stored (its numbers as in the source); a JSON `null` value is "
        "written `null`, like SQL NULL",
        "string of JSON text (arrow.json)",
        _XLSX_TEXT,
        {"csv_excel": _EXCEL_PROFILE_TEXT, "json": _JSON_NULL, "xlsx": _LONG_TEXT},
    ),
    TypeRule(
        "json",
        "json",
        "JSON text as written",
        _EXCEL_AS_TEXT,
        "nested JSON value as written (key order, duplicate keys); line breaks between tokens "
        "become spaces; a JSON `null` value is written `null`, like SQL NULL",
        "string of JSON text as written (arrow.json)",
        _XLSX_TEXT,
        {"csv_excel": _EXCEL_PROFILE_TEXT, "json": _JSON_NULL, "xlsx": _LONG_TEXT},
    ),
    TypeRule(
        "array",
        "arrays (any element type, NULL elements)",
        "PostgreSQL array text `{1,NULL,3}`",
        _SAME,
        "JSON array (nested for multi-dimensional values), `null` elements, elements as their "
        "type's JSON (bigint, numeric, real, double as strings); lower bounds dropped",
        "list<element type>, null elements; multi-dimensional values as null; lower bounds dropped",
        f"{_XLSX_TEXT}, as in csv",
        {
            "json": {LOWER_BOUND: "the elements only"},
            "parquet": {
                MULTI_DIMENSIONAL: "null (a Parquet list has one dimension)",
                LOWER_BOUND: "the elements only (one-dimensional values)",
            },
            "xlsx": _LONG_TEXT,
        },
    ),
    TypeRule(
        "bytea",
        "bytea",
        "base64 (one line)",
        _EXCEL_AS_TEXT,
        "string, base64",
        "binary",
        f"{_XLSX_TEXT}, base64",
        {"csv_excel": _EXCEL_PROFILE_TEXT, "xlsx": _LONG_TEXT},
    ),
)
_BY_FAMILY = {r.family: r for r in RULES}
_FAMILY_OF_TYPE = {
    "int2": "integer",
    "int4": "integer",
    "int8": "bigint",
    "float4": "float",
    "float8": "float",
    "bool": "boolean",
    "date": "date",
    "time": "time",
    "timetz": "time",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "interval": "interval",
    "uuid": "uuid",
    "jsonb": "jsonb",
    "json": "json",
    "bytea": "bytea",
}


def numeric_precision_scale(col: ColumnInfo) -> tuple[int, int] | None:
    """(precision, scale) of a numeric(p,s) column; None without a precision."""
    if col.type_name != "numeric" or col.typmod < 4:
        return None
    return ((col.typmod - 4) >> 16) & 0xFFFF, (col.typmod - 4) & 0xFFFF


def category(col: ColumnInfo) -> str:
    """The type family a column belongs to (a RULES row)."""
    if col.type_name.startswith("_"):
        return "array"
    if col.type_name == "numeric":
        ps = numeric_precision_scale(col)
        return "decimal" if ps and 0 < ps[0] <= NUMERIC_MAX_DECIMAL_PRECISION else "numeric"
    return _FAMILY_OF_TYPE.get(col.type_name, "text")


def rule_for(col: ColumnInfo) -> TypeRule:
    return _BY_FAMILY[category(col)]


def describe(col: ColumnInfo, fmt: str) -> dict[str, object]:
    """The manifest's account of one column in one format."""
    rule = rule_for(col)
    return {"representation": rule.representation(fmt), "special_values": rule.special_values(fmt)}


def contract_markdown() -> str:
    """The type-contract table of docs/formats.md."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| PostgreSQL | CSV | CSV `excel` profile | JSONL / JSON | Parquet | XLSX | PDF |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in RULES:
        lines.append(
            "| "
            + " | ".join(cell(v) for v in (r.postgres, r.csv, r.csv_excel, r.json, r.parquet, r.xlsx, r.pdf))
            + " |"
        )
    return "\n".join(lines) + "\n"
