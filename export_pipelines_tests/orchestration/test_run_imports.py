"""A run process loads only what its export uses: the code location and a CSV run import neither
pyarrow (Parquet, zstd), reportlab (PDF), fastapi (the HTTP API), pandas, nor dagster-aws (the
S3 IO manager of several-machine set-ups). Each costs tens of MB of RSS and part of a second of
start-up in every run process.

Checked in a fresh interpreter (the test process itself has imported them all), loading the code
location as a run worker does (`export_pipelines.definitions.defs`) and running tenant_export_job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

NOT_FOR_CSV = ("pyarrow", "reportlab", "fastapi", "pandas", "dagster_aws")

_PROBE = """
import json, sys
import dagster as dg
from export_pipelines.definitions import defs
from export_pipelines.orchestration.run_config import export_run_config

NAMES = {names!r}

def loaded():
    return sorted({{m.split(".")[0] for m in sys.modules}} & set(NAMES))

definitions = defs()
after_load = loaded()
job = definitions.resolve_job_def("tenant_export_job")
result = job.execute_in_process(
    run_config=export_run_config(tenant_id="t-005", resource="orders", format="{fmt}", request_id="imports"),
    instance=dg.DagsterInstance.ephemeral(),
    raise_on_error=False,
)
print(json.dumps({{"success": result.success, "after_load": after_load, "after_run": loaded()}}))
"""


def _probe(fmt: str, stack_env, source_url, bucket, prefix) -> dict:
    env = {**os.environ, **stack_env, "SOURCE_DATABASE_URL": source_url, "EXPORT_BUCKET": bucket}
    env["EXPORT_PREFIX"] = prefix
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(names=NOT_FOR_CSV, fmt=fmt)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_code_location_and_csv_run_import_no_pyarrow_reportlab_fastapi_pandas_dagster_aws(
    stack_env, source_url, s3_client, bucket, prefix
):
    out = _probe("csv", stack_env, source_url, bucket, prefix)
    assert out["success"]
    assert out["after_load"] == []
    assert out["after_run"] == []


def test_a_parquet_run_imports_pyarrow_when_it_needs_it(stack_env, source_url, s3_client, bucket, prefix):
    """The counterpart: the lazy import does happen, and the run succeeds with it."""
    out = _probe("parquet", stack_env, source_url, bucket, prefix)
    assert out["success"]
    assert out["after_load"] == []
    assert out["after_run"] == ["pyarrow"]
