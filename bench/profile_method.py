"""Where the time goes: py-spy samples one benchmark method and sorts the samples into categories.

    .venv/bin/python bench/profile_method.py ours_csv                  # 1M rows (run bench/run.py once first)
    .venv/bin/python bench/profile_method.py job_csv --rows 10000000

Samples every thread at 100 Hz, idle ones too (`--idle`), with native frames (`--native`) so time
inside zlib, libpq, ADBC and Parquet shows up under its own name. Prints the share of busy
samples (all threads; a thread waiting for PostgreSQL or S3 counts as busy, one waiting on a lock
or queue does not) per category, then per thread. The raw profile lands in bench/results/.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from export_pipelines_dev.demo_data import BIG_TENANT
from export_pipelines_dev.local_stack import api as local_stack

HERE = Path(__file__).resolve().parent
IDLE = "idle: waiting on a lock, queue or future"
RULES = [  # first match on the whole stack wins
    ("start-up: imports", r"_find_and_load"),
    ("Parquet: choosing dictionary columns", r"dictionary_columns"),
    ("Parquet: write_table (encode, zstd)", r"write_table|_flush_row_group"),
    ("Parquet: normalise/cast batches", r"_normalise"),
    ("gzip -1 (zlib)", r"deflate|_compress \(|zlib"),
    ("SHA-256 of the parts", r"(?i)sha256|EVP_hash|digest \("),
    (
        "S3: uploads (signing, HTTP, waiting for S3)",
        r"upload_part|complete_multipart|create_multipart|botocore|urllib3|http/client|boto3",
    ),
    (
        "waiting for PostgreSQL",
        r"PQsocketPoll|pqSocketCheck|pqReadData|pqWait"
        r"|(keyset|_Reader|plan_export|psycopg).*(select \(|poll \()",
    ),
    ("ADBC: COPY binary -> Arrow", r"_batches|RecordBatchReader|adbc"),
    ("COPY: libpq get_copy_data loop", r"read \(.*keyset\.py"),
    (
        IDLE,
        r"PyThread_acquire_lock_timed|take_gil|pthread_cond_timedwait|wait \(threading\.py"
        r"|_worker \(concurrent|queue\.py|result \(",
    ),
    ("keyset bounds, plan, snapshot (psycopg)", r"next_range|plan_export|begin_file|end_file|psycopg"),
    ("manifest, finalize", r"finalize_export|manifest"),
    ("Python cyclic GC", r"gc_collect"),
    ("Dagster (run machinery, events, logging)", r"logging/__init__|sqlalchemy|sqlite|dagster.*<module>"),
    ("exporter loop: part buffer appends and copies", r"run_export"),
    ("Dagster (run machinery, events, logging)", r"dagster"),
]


def summarise(raw: Path) -> str:
    by_cat: collections.Counter[str] = collections.Counter()
    by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    names: dict[str, str] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        head = re.match(r"thread \((\w+)\)(?:: ([^;]+))?", stack)
        tid = head.group(1) if head else "?"
        if head and head.group(2):
            names[tid] = head.group(2)
        cat = next((name for name, rx in RULES if re.search(rx, stack)), "other")
        by_cat[cat] += int(count)
        by_thread[tid][cat] += int(count)
    busy = sum(by_cat.values()) - by_cat[IDLE]
    out = [f"{busy} busy samples (of {sum(by_cat.values())}), share per category:"]
    out += [f"  {100 * n / busy:5.1f} %  {cat}" for cat, n in by_cat.most_common() if cat != IDLE]
    for tid, cats in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(cats.values())
        top = ", ".join(f"{cat} {100 * n / total:.0f} %" for cat, n in cats.most_common(4))
        out.append(f"  thread {names.get(tid, tid)} ({total} samples): {top}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "method", choices=["ours_csv", "ours_parquet", "job_csv", "job_parquet", "ref_parquet"]
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="size of an existing bench database")
    args = parser.parse_args()
    env = {**os.environ, **local_stack.start()}
    env["SOURCE_DATABASE_URL"] = env["SOURCE_DATABASE_URL"].rsplit("/", 1)[0] + f"/exports_bench_{args.rows}"
    (HERE / "results").mkdir(exist_ok=True)
    raw = HERE / "results" / f"profile-{args.method}-{args.rows}-{datetime.now(UTC):%Y%m%dT%H%M%S}.txt"
    prefix = f"bench/profile-{uuid.uuid4().hex[:8]}"
    py_spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(py_spy), "record", "-r", "100", "--threads", "--idle", "--native", "-f", "raw", "-o", str(raw)]
    cmd += ["--", sys.executable, str(HERE / "method.py"), args.method, BIG_TENANT, prefix]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit("profiling failed")
    result = [line for line in done.stdout.splitlines() if line.startswith("{")]
    print(f"{args.method}, {args.rows:,} rows: {result[-1] if result else '?'}")
    print(summarise(raw))
    print(f"raw profile: {raw}")


if __name__ == "__main__":
    main()
