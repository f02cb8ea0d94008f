"""One benchmark method, run in its own process so its peak RSS is its own.

    python bench/method.py ours_csv|ours_parquet|job_csv|job_parquet|ref_parquet TENANT PREFIX

Prints one JSON line: {"seconds", "rows", "bytes", "keys"}. `ours_*` call the same core
functions tenant_export_job's ops call; `job_csv`/`job_parquet` run the job itself (execute_in_process).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path

from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.requests.catalog import load_catalog
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.storage.s3 import make_s3_client
from export_pipelines.settings import Settings

COLUMNS = ["id", "tenant_id", "created_at", "status", "amount", "currency", "customer_email", "note", "attrs"]


def ours(fmt: str, tenant: str, prefix: str) -> dict:
    settings = Settings.from_env()
    url, bucket = settings.require_source_database_url(), settings.require_bucket()
    catalog = load_catalog(settings.catalog_path)
    client = make_s3_client(**settings.s3_client_options())
    timeout = settings.statement_timeout_seconds
    start = time.perf_counter()
    request = build_request(catalog, tenant_id=tenant, resource="orders", format=fmt, export_id="bench")
    plan = plan_export(url, catalog, request, prefix, statement_timeout_seconds=timeout)
    clear_success_marker(client, bucket, plan.location)
    outcome = run_export(
        plan,
        conninfo=url,
        catalog=catalog,
        s3_client=client,
        bucket=bucket,
        statement_timeout_seconds=timeout,
    )
    finalize_export(client, bucket, plan, outcome)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows": outcome.rows,
        "bytes": outcome.bytes,
        "keys": [f.key for f in outcome.files],
    }


def job(fmt: str, tenant: str, prefix: str) -> dict:
    import dagster as dg

    from export_pipelines.orchestration.definitions import build_definitions
    from export_pipelines.orchestration.run_config import export_run_config

    defs = build_definitions(dataclasses.replace(Settings.from_env(), prefix=prefix))
    job_def = defs.resolve_job_def("tenant_export_job")
    gc.freeze()  # as the code location does when Dagster loads it (export_pipelines/definitions.py)
    config = export_run_config(tenant_id=tenant, resource="orders", format=fmt, request_id=f"bench-job-{fmt}")
    start = time.perf_counter()
    result = job_def.execute_in_process(run_config=config, instance=dg.DagsterInstance.ephemeral())
    seconds = time.perf_counter() - start
    done = result.output_for_node("exports.finalize")
    return {"seconds": seconds, "rows": done.rows, "bytes": done.bytes, "keys": [f.key for f in done.files]}


def ref_parquet(tenant: str, prefix: str) -> dict:
    """The Parquet reference: ADBC → ParquetWriter(zstd) → boto3 upload_fileobj (a pipe between)."""
    import subprocess

    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = Settings.from_env()
    bucket, key = settings.require_bucket(), f"{prefix}/ref.parquet"
    start = time.perf_counter()
    uploader = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "upload_stdin.py"), bucket, key],
        stdin=subprocess.PIPE,
    )
    rows = 0
    with adbc.connect(settings.require_source_database_url()) as conn, conn.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'")
        tenant_literal = tenant.replace("'", "''")
        cur.execute(
            f"SELECT {', '.join(COLUMNS)} FROM orders WHERE tenant_id = '{tenant_literal}' ORDER BY id"
        )
        reader = cur.fetch_record_batch()
        sink = pa.PythonFile(uploader.stdin, mode="w")
        writer = None
        for batch in reader:
            if writer is None:
                writer = pq.ParquetWriter(sink, batch.schema, compression="zstd")
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is not None:
            writer.close()
    uploader.stdin.close()
    if uploader.wait() != 0:
        raise SystemExit("reference upload failed")
    seconds = time.perf_counter() - start
    size = make_s3_client(**settings.s3_client_options()).head_object(Bucket=bucket, Key=key)["ContentLength"]
    return {"seconds": seconds, "rows": rows, "bytes": size, "keys": [key]}


def main() -> None:
    method, tenant, prefix = sys.argv[1:4]
    if method == "ours_csv":
        out = ours("csv", tenant, prefix)
    elif method == "ours_parquet":
        out = ours("parquet", tenant, prefix)
    elif method in ("job_csv", "job_parquet"):
        out = job(method.removeprefix("job_"), tenant, prefix)
    elif method == "ref_parquet":
        out = ref_parquet(tenant, prefix)
    else:
        raise SystemExit(f"unknown method {method!r}")
    # Our own peak, read just before exit (the parent samples too, but may miss the very end).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            out["peak_rss_mb"] = int(line.split()[1]) / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
