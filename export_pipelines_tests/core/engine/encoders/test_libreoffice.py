"""The spreadsheet formats opened by a real spreadsheet program: LibreOffice Calc, headless.

The XLSX export is converted to CSV by LibreOffice, and the excel-profile CSV is imported by
LibreOffice (as a user opening it would: UTF-8, formulas evaluated) and saved as XLSX; both
results are compared, value by value, with what PostgreSQL holds. `scripts/test.sh` installs
`libreoffice-calc` when `soffice` is missing.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import warnings
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from export_pipelines_tests.support import type_zoo
from export_pipelines_tests.support.zoo_expect import (
    excel_csv_value,
    excel_cut,
    export,
    file_bytes,
    pg_text,
    xlsx_expected,
)

TENANT = "z-2"  # every zoo value occurs for every tenant
# LibreOffice's CSV filter: comma, double quote, UTF-8 (76), header on line 1, no column formats,
# en-US; import: quoted fields not forced to text, special numbers not detected, ..., evaluate
# formulas (token 13); export: raw values, not as shown (token 9).
CSV_IMPORT = "Text - txt - csv (StarCalc):44,34,76,1,,1033,false,false,false,false,false,false,true"
CSV_EXPORT = "Text - txt - csv (StarCalc):44,34,76,1,,1033,false,false,false,false,false"


@pytest.fixture(scope="module")
def soffice() -> str:
    path = shutil.which("soffice")
    if path is None:
        message = "soffice not found: scripts/test.sh installs libreoffice-calc"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def convert(soffice: str, source: Path, target: str, workdir: Path, infilter: str | None = None) -> Path:
    """`soffice --convert-to`, with a private profile (no clash with other runs or a desktop)."""
    out = workdir / "out"
    args = [soffice, "--headless", "--norestore", f"-env:UserInstallation=file://{workdir}/profile"]
    if infilter:
        args.append(f"--infilter={infilter}")
    args += ["--convert-to", target, "--outdir", str(out), str(source)]
    env = {**os.environ, "HOME": str(workdir)}
    subprocess.run(args, check=True, capture_output=True, timeout=180, env=env)
    converted = out / (source.stem + "." + target.split(":", 1)[0])
    assert converted.exists(), f"LibreOffice did not write {converted}"
    return converted


def same_lines(text: str) -> str:
    # LibreOffice keeps a line break inside a cell as LF: CR LF and lone CR come back as LF.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def test_libreoffice_reads_the_xlsx(soffice, zoo, pg_rows, source_url, s3_client, bucket, prefix, tmp_path):
    manifest = export(zoo, source_url, s3_client, bucket, prefix, tenant_id=TENANT, format="xlsx")
    source = tmp_path / "zoo.xlsx"
    source.write_bytes(file_bytes(s3_client, bucket, manifest))
    converted = convert(soffice, source, f"csv:{CSV_EXPORT}", tmp_path)
    with converted.open(encoding="utf-8", newline="") as handle:
        got = list(csv.reader(handle))
    assert got[0] == list(type_zoo.COLUMNS)
    rows = pg_rows[TENANT]
    assert len(got) == len(rows) + 1
    for values, row in zip(got[1:], rows, strict=True):
        for have, col in zip(values, type_zoo.COLUMNS, strict=True):
            want = xlsx_expected(row, col)
            where = (col, row["id"], have[:60], str(want)[:60])
            if want is None:
                assert have == "", where
            elif isinstance(want, bool):
                assert have == ("TRUE" if want else "FALSE"), where
            elif isinstance(want, datetime):
                assert have == want.date().isoformat(), where
            elif isinstance(want, Decimal | int):
                assert float(have) == float(want), where
            else:
                assert same_lines(have) == same_lines(want), where


def control_unescape(text: str) -> str:
    return re.sub(r"_x(00[01][0-9A-Fa-f])_", lambda m: chr(int(m.group(1), 16)), text)


def spreadsheet_value(col: str, field: str | None) -> Any:
    """What a spreadsheet makes of one excel-profile CSV field: `="…"` is that text, a number is
    a number, everything else text (a leading `'` stays: it is what defuses a formula)."""
    if field is None or field == "":
        return None
    if re.fullmatch(r'="(.*)"', field, flags=re.DOTALL):
        return field[2:-1]
    if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", field):
        return Decimal(field)
    return field


def test_libreoffice_opens_the_excel_csv(
    soffice, zoo, pg_rows, source_url, s3_client, bucket, prefix, tmp_path
):
    manifest = export(zoo, source_url, s3_client, bucket, prefix, tenant_id=TENANT, format="csv_excel")
    source = tmp_path / "zoo.csv"
    source.write_bytes(file_bytes(s3_client, bucket, manifest))
    converted = convert(soffice, source, "xlsx", tmp_path, infilter=CSV_IMPORT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # openpyxl warns about dates before year 1 (shown as #VALUE!)
        sheet = openpyxl.load_workbook(converted, data_only=True).active
    got = list(sheet.iter_rows(values_only=True))
    assert list(got[0]) == list(type_zoo.COLUMNS)
    rows = pg_rows[TENANT]
    assert len(got) == len(rows) + 1
    formulas_defused = 0
    for values, row in zip(got[1:], rows, strict=True):
        for have, col in zip(values, type_zoo.COLUMNS, strict=True):
            want = spreadsheet_value(col, excel_csv_value(col, pg_text(row, col)))
            where = (col, row["id"], str(have)[:60], str(want)[:60])
            if isinstance(have, datetime) or have == "#VALUE!":
                # Calc turns ISO dates into date cells, as Excel does; the date must be the same
                # (years before 1 or after 9999 are dates openpyxl cannot show).
                assert col == "c_date" and re.fullmatch(r"\d{4,}-\d\d-\d\d( BC)?", str(want)), where
                if isinstance(have, datetime) and want >= "1900-03-01":
                    # (earlier serials are ambiguous: Excel's 1900 leap-year bug)
                    assert have.date().isoformat() == want, where
            elif isinstance(want, Decimal):
                assert isinstance(have, int | float) and not isinstance(have, bool), where
                assert float(have) == float(want), where
            elif isinstance(want, str):
                # Calc's own XLSX writer keeps Excel's 32,767-character cell limit.
                # (and escapes control characters, only those, as _xHHHH_; openpyxl keeps them).
                assert isinstance(have, str), where
                assert same_lines(control_unescape(have)) == same_lines(excel_cut(want)), where
                formulas_defused += want.startswith("'=")
            else:
                assert have == want, where
    assert formulas_defused > 0  # '=SUM(A1:A2) arrived as text, not as a formula
