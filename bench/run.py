"""Benchmark: our export core and job against `psql \\copy | gzip -1` and ADBC → Parquet, all
uploading to the same local S3 server, in the same run, round-robin.

    .venv/bin/python bench/run.py                      # 1M and 10M rows, 3 repetitions
    .venv/bin/python bench/run.py --rows 1000000 --reps 5
    .venv/bin/python bench/run.py --smoke              # 20,000 rows, 1 repetition (CI)

Data: database `exports_bench` on the local stack, one big tenant `t-big` with --rows rows among
30 small tenants; built once per size and reused. Every method runs in its own process; peak
RSS is that process tree's (`wait4` ru_maxrss: the largest process, not the sum). Outputs are
verified: row counts, and for CSV the decompressed bytes of ours must equal the reference's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from export_pipelines.core.storage.s3 import make_s3_client
from export_pipelines.settings import Settings
from export_pipelines_dev.demo_data import BIG_TENANT, DemoSize, load_demo_data
from export_pipelines_dev.local_stack import api as local_stack
from export_pipelines_dev.local_stack.postgres import pg_bin

HERE = Path(__file__).resolve().parent
BENCH_DB = "exports_bench"
COLUMNS = "id, tenant_id, created_at, status, amount, currency, customer_email, note, attrs"
METHODS = ["floor", "ref_csv", "ours_csv", "job_csv", "ref_parquet", "ours_parquet", "job_parquet"]
REFERENCE = {
    "ours_csv": "ref_csv",
    "job_csv": "ref_csv",
    "ours_parquet": "ref_parquet",
    "job_parquet": "ref_parquet",
}
FLOOR = "floor"  # psql \copy of the same query to /dev/null: what PostgreSQL alone takes


@dataclass
class Sample:
    seconds: float
    rss_mb: float
    rows: int
    bytes: int
    keys: list[str]
    cpu: float = 0.0  # user + system CPU seconds of the method's process tree


@dataclass
class Result:
    method: str
    rows_target: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def rss(self) -> float:
        return max(s.rss_mb for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu for s in self.samples)


def ensure_data(env: dict[str, str], big_rows: int, database: str) -> str:
    """Build (or reuse) the benchmark table for this size; returns its URL."""
    admin = env["SOURCE_DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
    url = env["SOURCE_DATABASE_URL"].rsplit("/", 1)[0] + "/" + database
    size = DemoSize(big_rows=big_rows, small_rows=max(big_rows // 10, 1000), small_tenants=30)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (big_rows bigint)")
        have = conn.execute("SELECT big_rows FROM bench_meta").fetchone()
        if not have or have[0] != big_rows:
            print(f"building benchmark data: {size.total:,} rows …", flush=True)
            start = time.perf_counter()
            load_demo_data(conn, size)
            conn.execute("DELETE FROM bench_meta")
            conn.execute("INSERT INTO bench_meta VALUES (%s)", [big_rows])
            conn.execute("VACUUM ANALYZE orders")
            print(f"  built in {time.perf_counter() - start:.0f}s", flush=True)
    return url


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return out


def _peak_rss_mb(pid: int, seen: dict[int, int]) -> None:
    """VmHWM (peak RSS since exec) of every process of the tree; ru_maxrss would also count the
    benchmark's own memory, which a forked child carries until it execs."""
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    seen[p] = max(seen.get(p, 0), int(line.split()[1]))
        except OSError:
            pass


def run_measured(
    argv: list[str], env: dict[str, str], shell: bool = False
) -> tuple[float, float, str, float]:
    """Run a command; return (seconds, peak RSS MB of its largest process, stdout, CPU seconds).

    CPU seconds (user + system, of the process and the children it waited for) are what the
    method itself burnt: unlike wall time they barely move when other jobs load the machine."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out_file:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv if not shell else ["bash", "-o", "pipefail", "-c", argv[0]],
            env=env,
            stdout=out_file,
            stderr=err,  # Dagster's run log: shown only if the step fails
        )
        seen: dict[int, int] = {}
        while True:
            _peak_rss_mb(proc.pid, seen)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            err.seek(0)
            sys.stderr.write(err.read()[-4000:].decode(errors="replace"))
            raise SystemExit(f"benchmark step failed: {argv}")
        out_file.seek(0)
        out = out_file.read().decode()
    return seconds, max(seen.values(), default=0) / 1024, out, cpu


def _copy_command(env: dict[str, str]) -> str:
    copy = (
        f"\\copy (SELECT {COLUMNS} FROM orders WHERE tenant_id = '{BIG_TENANT}' ORDER BY id) "
        "TO STDOUT (FORMAT csv, HEADER)"
    )
    psql, url = shlex.quote(str(pg_bin("psql"))), shlex.quote(env["SOURCE_DATABASE_URL"])
    return f"{psql} -X -q {url} -c {shlex.quote(copy)}"


def run_method(method: str, env: dict[str, str], prefix: str) -> Sample:
    bucket = env["EXPORT_BUCKET"]
    pg_env = {**env, "PGTZ": "UTC", "PGDATESTYLE": "ISO, YMD"}
    if method == FLOOR:
        seconds, rss, _, cpu = run_measured([f"{_copy_command(env)} > /dev/null"], pg_env, shell=True)
        return Sample(seconds, rss, -1, 0, [], cpu)
    if method == "ref_csv":
        key = f"{prefix}/ref.csv.gz"
        pipeline = (
            f"{_copy_command(env)} | gzip -1 | "
            f"{shlex.quote(sys.executable)} {HERE / 'upload_stdin.py'} {bucket} {key}"
        )
        seconds, rss, _, cpu = run_measured([pipeline], pg_env, shell=True)
        size = make_s3_client(**Settings.from_env(env).s3_client_options()).head_object(
            Bucket=bucket, Key=key
        )["ContentLength"]
        return Sample(seconds, rss, -1, size, [key], cpu)
    seconds, rss, out, cpu = run_measured(
        [sys.executable, str(HERE / "method.py"), method, BIG_TENANT, prefix], env
    )
    data = json.loads(out.strip().splitlines()[-1])
    rss = max(rss, data.get("peak_rss_mb", 0))
    return Sample(seconds, rss, data["rows"], data["bytes"], data["keys"], cpu)


def decompressed_sha256(client, bucket: str, keys: list[str]) -> tuple[str, int]:
    """sha256 and size of the decompressed bytes of gzip objects made of one or more members."""
    digest, size = hashlib.sha256(), 0
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        d = zlib.decompressobj(wbits=47)
        for chunk in iter(lambda b=body: b.read(8 << 20), b""):
            while chunk:
                out = d.decompress(chunk)
                digest.update(out)
                size += len(out)
                chunk = b""
                if d.eof:  # next gzip member
                    chunk, d = d.unused_data, zlib.decompressobj(wbits=47)
    return digest.hexdigest(), size


def verify(results: dict[str, Result], env: dict[str, str], expected_rows: int) -> list[str]:
    client, bucket = make_s3_client(**Settings.from_env(env).s3_client_options()), env["EXPORT_BUCKET"]
    notes = []
    csv_methods = [m for m in ("ours_csv", "job_csv") if m in results]
    if "ref_csv" in results and csv_methods:
        ref = results["ref_csv"].samples[-1]
        ref_sha, ref_size = decompressed_sha256(client, bucket, ref.keys)
        for method in csv_methods:
            sample = results[method].samples[-1]
            sha, size = decompressed_sha256(client, bucket, sample.keys)
            if sha != ref_sha:
                raise SystemExit(
                    f"VERIFY FAILED: {method} CSV differs from the psql reference "
                    f"({size} vs {ref_size} bytes)"
                )
            notes.append(
                f"{method}: decompressed CSV identical to psql reference ({size:,} bytes, sha256 {sha[:12]}…)"
            )
    for method in ("ours_csv", "job_csv", "ours_parquet", "ref_parquet", "job_parquet"):
        if method not in results:
            continue
        rows = results[method].samples[-1].rows
        if rows != expected_rows:
            raise SystemExit(f"VERIFY FAILED: {method} exported {rows} rows, expected {expected_rows}")
    import io

    import pyarrow.parquet as pq

    for method in ("ours_parquet", "ref_parquet", "job_parquet"):
        if method not in results:
            continue
        key = results[method].samples[-1].keys[0]
        meta = pq.ParquetFile(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read())).metadata
        if meta.num_rows != expected_rows:
            raise SystemExit(f"VERIFY FAILED: {method} Parquet has {meta.num_rows} rows")
    notes.append(f"row counts: every method {expected_rows:,} rows (Parquet files read back with pyarrow)")
    return notes


def bench_size(
    env: dict[str, str], big_rows: int, reps: int, database: str, methods: list[str]
) -> tuple[dict[str, Result], int, list[str]]:
    url = ensure_data(env, big_rows, database)
    run_env = {**env, "SOURCE_DATABASE_URL": url}
    with psycopg.connect(url) as conn:
        expected = conn.execute("SELECT count(*) FROM orders WHERE tenant_id = %s", [BIG_TENANT]).fetchone()[
            0
        ]
    results = {m: Result(m, expected) for m in methods}
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    for rep in range(reps):
        for method in methods:  # round-robin, so drift hits every method alike
            sample = run_method(method, run_env, f"{prefix}/{method}")
            results[method].samples.append(sample)
            print(
                f"  {big_rows:>10,} rows  rep {rep + 1}/{reps}  {method:<13} {sample.seconds:6.2f}s  "
                f"{sample.rss_mb:6.0f} MB  {sample.cpu:6.2f} CPU s",
                flush=True,
            )
    for method in ("ref_csv", FLOOR):
        if method in results:
            results[method].samples[-1].rows = expected
    return results, expected, verify(results, run_env, expected)


def table(all_results: list[tuple[int, dict[str, Result], int]]) -> str:
    lines = [
        "| rows | method | median s | rows/s | MB/s (output) | peak RSS MB | ratio to reference | "
        "ratio to floor | CPU s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, results, expected in all_results:
        for method in [m for m in METHODS if m in results]:
            r = results[method]
            ref = REFERENCE.get(method)
            if ref in results:
                ratio = f"{r.median / results[ref].median:.2f}x {ref}"
            else:
                ratio = "1.00 (reference)" if ref is None else "-"
            out_mb = statistics.median(s.bytes for s in r.samples) / 1e6
            floor = f"{r.median / results[FLOOR].median:.2f}x" if FLOOR in results else "-"
            lines.append(
                f"| {expected:,} | {method} | {r.median:.2f} | {expected / r.median:,.0f} | "
                f"{out_mb / r.median:.1f} | {r.rss:.0f} | {ratio} | {floor} | {r.cpu:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1000000,10000000", help="big-tenant sizes, comma-separated")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="20,000 rows, 1 repetition")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}"
    )
    args = parser.parse_args()
    sizes = [20_000] if args.smoke else [int(x) for x in args.rows.split(",")]
    reps = 1 if args.smoke else args.reps
    methods = [m for m in METHODS if m in args.methods.split(",")]
    if not methods or set(args.methods.split(",")) - set(METHODS):
        parser.error(f"--methods: choose from {','.join(METHODS)}")

    env = {**os.environ, **local_stack.start()}
    env["EXPORT_PREFIX"] = "bench"
    client = make_s3_client(**Settings.from_env(env).s3_client_options())
    try:
        client.head_bucket(Bucket=env["EXPORT_BUCKET"])
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=env["EXPORT_BUCKET"])
    all_results, notes = [], []
    for size in sizes:
        # One database per size (the smoke run's too): switching sizes never rebuilds 10M rows.
        database = f"{BENCH_DB}_smoke" if args.smoke else f"{BENCH_DB}_{size}"
        results, expected, size_notes = bench_size(env, size, reps, database, methods)
        all_results.append((size, results, expected))
        notes += [f"{expected:,} rows: {n}" for n in size_notes]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    header = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {os.cpu_count()} cores, {mem:.0f} GiB · "
        f"{platform.python_implementation()} {platform.python_version()} · "
        f"`{' '.join(['bench/run.py', *sys.argv[1:]])}` · {reps} rep(s), median"
    )
    report = "\n".join([header, "", table(all_results), "", *[f"- {n}" for n in notes]])
    print("\n" + report)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    print(f"verified: {len(notes)} checks passed")
    (out_dir / f"{datetime.now(UTC):%Y%m%dT%H%M%S}.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
