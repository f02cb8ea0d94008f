"""The export process imports neither pandas nor numpy (pyarrow would import numpy if it were
installed: ~14 MB of RSS per export). pandas is the customer's reader, in .venv-readers only."""

from __future__ import annotations

import subprocess
import sys

import pytest

from export_pipelines_tests.support.zoo_expect import export

FORMATS = ["csv", "csv_excel", "jsonl", "json", "parquet", "xlsx", "pdf"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_imports_neither_pandas_nor_numpy(fmt, zoo, source_url, s3_client, bucket, prefix):
    export(zoo, source_url, s3_client, bucket, prefix, tenant_id="z-1", format=fmt)
    assert "pandas" not in sys.modules and "numpy" not in sys.modules


def test_project_venv_has_no_numpy_to_import():
    probe = "import importlib.util as u; print(u.find_spec('numpy'), u.find_spec('pandas'))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["None", "None"]
