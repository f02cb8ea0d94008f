"""The PDF report format: every value of a small export is in the text of the PDF, in order;
the header repeats on every page; the row cap is refused when the export is planned."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.errors import InvalidRequest
from export_pipelines.core.requests.request import build_request
from export_pipelines_tests.support import type_zoo
from export_pipelines_tests.support.zoo_expect import export, file_bytes, pg_text

# On CI the customer readers must be there (scripts/test_readers.sh, test_tools.sh): a missing one fails, never skips.
ON_CI = os.environ.get("CI") == "true"
needs_poppler = pytest.mark.skipif(
    not (shutil.which("pdftotext") and shutil.which("pdftoppm")) and not ON_CI,
    reason="poppler-utils missing (scripts/test_tools.sh installs it)",
)
# Values of these columns are short ASCII text: easy to find in the extracted text.
SMALL = [
    "id",
    "c_smallint",
    "c_integer",
    "c_bigint",
    "c_decimal",
    "c_double",
    "c_boolean",
    "c_date",
    "c_uuid",
]


def _pdf_text(data: bytes, tmp_path: Path, *args: str) -> str:
    path = tmp_path / "export.pdf"
    path.write_bytes(data)
    return subprocess.run(
        ["pdftotext", *args, str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


@needs_poppler
def test_pdf_holds_every_value_in_order(zoo, pg_rows, source_url, s3_client, bucket, prefix, tmp_path):
    tenant = "z-1"
    manifest = export(
        zoo, source_url, s3_client, bucket, prefix, tenant_id=tenant, format="pdf", columns=SMALL
    )
    (f,) = manifest["files"]
    assert f["key"].endswith(".pdf")
    assert s3_client.head_object(Bucket=bucket, Key=f["key"])["ContentType"] == "application/pdf"
    raw = file_bytes(s3_client, bucket, manifest)
    assert raw.startswith(b"%PDF-")
    text = _pdf_text(raw, tmp_path, "-raw")
    flat = "".join(text.split())
    # Title block.
    assert "type_zooexport" in flat and f"Tenant:{tenant}" in flat and "Generatedat:" in flat
    assert f"Rows:{len(pg_rows[tenant])}" in flat
    # Every value, row by row, in order (wrapping only adds whitespace).
    at = flat.index("".join(SMALL))
    for row in pg_rows[tenant]:
        for col in SMALL:
            value = "".join((pg_text(row, col) or "").split())
            found = flat.find(value, at)
            assert found >= 0, (row["id"], col, value, flat[at : at + 200])
            at = found + len(value)
    columns = {c["name"]: c for c in manifest["columns"]}
    assert columns["c_double"]["representation"].startswith("shortest text")


@needs_poppler
def test_pdf_wide_report_repeats_the_header_and_numbers_pages(
    zoo, source_url, s3_client, bucket, prefix, tmp_path
):
    manifest = export(zoo, source_url, s3_client, bucket, prefix, tenant_id="z-2", format="pdf")
    raw = file_bytes(s3_client, bucket, manifest)
    pages = _pdf_text(raw, tmp_path, "-raw").split("\f")
    pages = [p for p in pages if p.strip()]
    assert len(pages) > 1
    for number, page in enumerate(pages, start=1):
        flat = "".join(page.split())
        assert "idtenant_idc_smallint" in flat, number  # the header row on every page
        assert f"Page{number}" in flat
    # Landscape (wide table), and the 100 KB cell is cut, not spread over pages.
    info = subprocess.run(
        ["pdfinfo", str(tmp_path / "export.pdf")], check=True, capture_output=True, text=True
    ).stdout
    width, height = (float(x) for x in info.split("Page size:")[1].split("pts")[0].split(" x "))
    assert width > height
    assert "morecharacters)" in "".join(pages[0].split()) or any("(cut)" in p for p in pages)
    # The first page, rendered, for a person to look at.
    subprocess.run(
        [
            "pdftoppm",
            "-png",
            "-r",
            "60",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(tmp_path / "export.pdf"),
            str(tmp_path / "page1"),
        ],
        check=True,
    )
    png = tmp_path / "page1.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    shutil.copy(png, "/tmp/pdf_page1.png")


def test_pdf_over_the_row_cap_is_refused_when_planned(zoo, source_url, prefix):
    request = build_request(zoo, resource="type_zoo", tenant_id="z-1", format="pdf", export_id="cap")
    with pytest.raises(InvalidRequest) as info:
        plan_export(source_url, zoo, request, prefix, pdf_max_rows=39)
    assert info.value.field == "format"
    message = str(info.value)
    assert "39" in message and "40" in message and "csv or xlsx" in message
    cap = type_zoo.ROWS_PER_TENANT
    assert (
        plan_export(source_url, zoo, request, prefix, pdf_max_rows=cap).rows_total == type_zoo.ROWS_PER_TENANT
    )


def test_pdf_takes_no_compression(zoo):
    with pytest.raises(InvalidRequest) as info:
        build_request(zoo, resource="type_zoo", tenant_id="z-1", format="pdf", compression="gzip")
    assert info.value.field == "compression" and "allowed: none" in str(info.value)
