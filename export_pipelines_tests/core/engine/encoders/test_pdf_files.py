"""PDF keeps the guarantees of every format: a resumed export restarts at the file boundary and its
files are byte-identical to an uninterrupted run's (the title's "generated at" is the first
attempt's plan time); max_rows_per_file splits the report into several PDFs. The first pages of a
25-column and a 5-column report are rendered to PNG for a person to look at."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.manifest import finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines_tests.core.engine.test_resume import Crash, file_hashes, run
from export_pipelines_tests.support.readback import get_bytes, read_manifest
from export_pipelines_tests.support.zoo_expect import export, file_bytes

TENANT = "t-001"  # a small demo tenant (6,707 orders in the test data: 14 files)
ROWS_PER_FILE = 500
# On CI the customer readers must be there (scripts/test_readers.sh, test_tools.sh): a missing one fails, never skips.
ON_CI = os.environ.get("CI") == "true"
needs_poppler = pytest.mark.skipif(
    not (shutil.which("pdftotext") and shutil.which("pdftoppm")) and not ON_CI, reason="poppler-utils missing"
)


@pytest.fixture
def checkpoints(source_url):
    store = CheckpointStore(source_url).migrate_once()
    yield store
    store.close()


def _plan(catalog, source_url, prefix, export_id, checkpoints=None, **kwargs):
    request = build_request(
        catalog,
        resource="orders",
        tenant_id=TENANT,
        export_id=export_id,
        format="pdf",
        max_rows_per_file=ROWS_PER_FILE,
        **kwargs,
    )
    return plan_export(source_url, catalog, request, prefix, checkpoints=checkpoints)


def _text(data: bytes, tmp_path: Path) -> str:
    path = tmp_path / "file.pdf"
    path.write_bytes(data)
    return subprocess.run(
        ["pdftotext", "-raw", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


def test_pdf_resumes_at_the_file_boundary_byte_identical(
    catalog, source_url, s3_client, bucket, prefix, checkpoints
):
    first = _plan(catalog, source_url, prefix, "resumed", checkpoints)
    assert first.rows_total > 2 * ROWS_PER_FILE, "three files or more"
    files = -(-first.rows_total // ROWS_PER_FILE)
    with pytest.raises(Crash):  # one part per PDF: the crash comes after whole files
        run(first, catalog, source_url, s3_client, bucket, checkpoints, crash_after_parts=3)
    done_before = {
        f.key: s3_client.head_object(Bucket=bucket, Key=f.key)["LastModified"]
        for f in checkpoints.files(first.location.folder, first.key_type)
        if f.complete
    }
    assert 1 <= len(done_before) < files

    again = _plan(catalog, source_url, prefix, "resumed", checkpoints)
    assert again.resumed and again.planned_at == first.planned_at  # the title's "generated at"
    outcome = run(again, catalog, source_url, s3_client, bucket, checkpoints)
    for key, modified in done_before.items():  # finished files were not written again
        assert s3_client.head_object(Bucket=bucket, Key=key)["LastModified"] == modified

    # An uninterrupted run planned at the same moment writes the same bytes.
    clean_plan = dataclasses.replace(_plan(catalog, source_url, prefix, "clean"), planned_at=first.planned_at)
    clean = run(clean_plan, catalog, source_url, s3_client, bucket)
    assert file_hashes(s3_client, bucket, outcome) == file_hashes(s3_client, bucket, clean)
    assert outcome.rows == clean.rows == first.rows_total

    done = finalize_export(s3_client, bucket, again, outcome, checkpoints)
    manifest = read_manifest(s3_client, bucket, done.manifest_key)
    assert manifest["resumable_at"] == "file"
    assert open_uploads(s3_client, bucket, first.location.folder) == []


@needs_poppler
def test_pdf_max_rows_per_file_splits_the_report(
    catalog, source_url, s3_client, bucket, prefix, pg, tmp_path
):
    plan = _plan(catalog, source_url, prefix, "split")
    outcome = run(plan, catalog, source_url, s3_client, bucket)
    done = finalize_export(s3_client, bucket, plan, outcome)
    manifest = read_manifest(s3_client, bucket, done.manifest_key)
    ids = [r[0] for r in pg.execute("SELECT id FROM orders WHERE tenant_id = %s ORDER BY id", [TENANT])]
    files = manifest["files"]
    assert len(files) == -(-len(ids) // ROWS_PER_FILE) >= 3
    assert [f["rows"] for f in files[:-1]] == [ROWS_PER_FILE] * (len(files) - 1)
    assert sum(f["rows"] for f in files) == len(ids)
    start = 0
    for f in files:
        assert f["key"].endswith(".pdf")
        flat = "".join(_text(get_bytes(s3_client, bucket, f["key"]), tmp_path).split())
        assert f"Rows:{f['rows']}" in flat  # each file is a report of its own rows
        chunk = ids[start : start + f["rows"]]
        at = flat.index("Rows:")
        for key in (chunk[0], chunk[-1]):
            found = flat.find(str(key), at)
            assert found >= 0, (f["key"], key)
            at = found
        start += f["rows"]


@needs_poppler
def test_pdf_first_pages_rendered(zoo, catalog, source_url, s3_client, bucket, prefix, tmp_path):
    """The first page of a 25-column report (type zoo) and of a 5-column one (orders), as PNG."""
    wide = export(zoo, source_url, s3_client, bucket, prefix + "-zoo", tenant_id="z-1", format="pdf")
    request = build_request(
        catalog,
        resource="orders",
        tenant_id=TENANT,
        export_id="five",
        format="pdf",
        columns=["id", "created_at", "status", "amount", "currency"],
    )
    plan = plan_export(source_url, catalog, request, prefix + "-orders")
    outcome = run(plan, catalog, source_url, s3_client, bucket)
    narrow = read_manifest(s3_client, bucket, finalize_export(s3_client, bucket, plan, outcome).manifest_key)
    assert len(wide["columns"]) == 25 and len(narrow["columns"]) == 5
    for name, data in (
        ("zoo", file_bytes(s3_client, bucket, wide)),
        ("orders", get_bytes(s3_client, bucket, narrow["files"][0]["key"])),
    ):
        pdf = tmp_path / f"{name}.pdf"
        pdf.write_bytes(data)
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
                str(pdf),
                str(tmp_path / name),
            ],
            check=True,
        )
        png = tmp_path / f"{name}.png"
        assert png.read_bytes().startswith(b"\x89PNG")
        shutil.copy(png, f"/tmp/pdf_{name}_page1.png")
