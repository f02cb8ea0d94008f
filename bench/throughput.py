"""Throughput of many small exports (docs/operations.md): today's set-up against the Celery one.

    source scripts/env.sh
    python bench/throughput.py                       # A and B, scenarios 1-4, N=100 for scenario 4
    python bench/throughput.py --modes B --scenarios 4 --monthly-tenants 1000

Run on demand, never in CI: it starts daemons and workers and takes 10-25 minutes. Same machine,
same run, against the shared dev stack's PostgreSQL and S3 (scratch databases `bench_tp_*`,
S3 prefix `bench_tp/`, all removed at the end):

- A the default single-machine set-up, as the README starts it: ./dagster.yaml
  (TenantRunCoordinator + DefaultRunLauncher: one process per run), `dagster-daemon run` (which
  starts the code server as its own gRPC subprocess) and `export-pipelines submitter`.
- B the Celery variant on one machine: deploy/celery/dagster.yaml, Redis from scripts/broker.sh
  on a free port (never 6379), two workers from scripts/worker.sh (concurrency 2 each, 4 slots =
  max_concurrent_runs), EXPORT_IO_MANAGER=s3, the same daemon + code server, and
  `export-pipelines submitter` (runs queued on the insert's NOTIFY, not at the sensor's tick).

Requests enter through the real door: rows in export_requests (RequestStore.create), picked up by
the request submitter (the insert's NOTIFY), or export_request_sensor for any row it missed
(EXPORT_SENSOR_INTERVAL_SECONDS=1; Dagster ticks sensors every 5 s at best). Monthly dumps go through
`dagster job backfill` of monthly_tenant_export_job. Scenarios (each bounded by a timeout):
1. 20 requests from 20 small tenants at once -> time until all `succeeded`, and the most
   exports running at the same moment (the rows' started_at .. completed_at);
2. request -> link (row `succeeded` with its download_url) of a 10,000-row export, sequential;
3. (B) VmRSS / VmHWM of every Celery pool child after each batch of 10 of 100 small exports;
4. N small tenants' monthly partitions by ONE backfill for the daemon (backfills.launch_backfill, not
   `dagster job backfill`) -> time until every partition is materialized (or failed); runs cover up
   to EXPORT_MONTHLY_BATCH_SIZE partitions each (monthly_asset.py).
Prints a table (ratios B/A) and the load average around each scenario; writes the JSON to
bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from export_pipelines.core.requests.request_store import RequestStore  # noqa: E402
from export_pipelines.core.storage.s3 import make_s3_client  # noqa: E402
from export_pipelines.orchestration.monthly.backfills import failed_partitions, launch_backfill  # noqa: E402
from export_pipelines.orchestration.monthly.monthly_asset import MONTHLY_ASSET_KEY  # noqa: E402
from export_pipelines_dev.demo_data import DemoSize, load_demo_data  # noqa: E402

SRC_DB = "bench_tp_src"
PREFIX = "bench_tp"
# 999 small tenants (the demo's ids have 3 digits) sharing 60,000 orders rows (tenant k gets
# ~950/sqrt(k) rows: t-002..t-021 have 200-670, "a few hundred"), and t-big
# with 10,000 rows: the 10,000-row export of scenario 2.
SIZE = DemoSize(big_rows=10_000, small_rows=60_000, small_tenants=999)
MONTH = "2024-03-01"
DONE = ("succeeded", "failed", "canceled")
RUN_DONE = ("SUCCESS", "FAILURE", "CANCELED")


def load() -> str:
    la = os.getloadavg()
    return f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"


def with_db(url: str, db: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + db


def recreate_db(url: str, db: str) -> str:
    with psycopg.connect(with_db(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    return with_db(url, db)


def drop_db(url: str, db: str) -> None:
    with psycopg.connect(with_db(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return port if port != 6379 else free_port()


def wait_until(cond: Callable[[], Any], timeout: float, every: float = 0.25) -> tuple[Any, float]:
    """(the condition's last value, seconds waited); the value is falsy on timeout."""
    start = time.monotonic()
    while True:
        value = cond()
        if value or time.monotonic() - start > timeout:
            return value, time.monotonic() - start
        time.sleep(every)


def children_of(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB."""
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


@dataclass
class Mode:
    name: str  # A or B
    base_env: dict[str, str]
    tmp: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    broker_env: dict[str, str] = field(default_factory=dict)

    @property
    def dagster_db(self) -> str:
        return f"bench_tp_dagster_{self.name.lower()}"

    def start_proc(self, name: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it open
        self.procs[name] = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def up(self, source_url: str) -> None:
        home = self.tmp / "dagster_home"
        home.mkdir(parents=True)
        yaml = ROOT / ("dagster.yaml" if self.name == "A" else "deploy/celery/dagster.yaml")
        shutil.copy(yaml, home / "dagster.yaml")
        (self.tmp / "workspace.yaml").write_text(
            "load_from:\n  - python_module:\n      module_name: export_pipelines.definitions\n"
            "      location_name: export_pipelines\n"
        )
        self.env = dict(self.base_env)
        self.env.update(
            SOURCE_DATABASE_URL=source_url,
            DAGSTER_POSTGRES_URL=recreate_db(self.base_env["DAGSTER_POSTGRES_URL"], self.dagster_db),
            DAGSTER_HOME=str(home),
            EXPORT_PREFIX=f"{PREFIX}/{self.name}",
            EXPORT_SENSOR_INTERVAL_SECONDS="1",
            # Scenario 2 sends 20 requests of one tenant in about a minute: at the default start
            # rate (10 per tenant per minute, a fairness rule) the 11th would wait for the minute
            # to pass, which measures the rule, not the latency.
            EXPORT_TENANT_STARTS_PER_MINUTE="60",
            PYTHONPATH=f"{ROOT}:{ROOT / 'deploy' / 'celery'}",
        )
        if self.name == "B":
            self.env["EXPORT_IO_MANAGER"] = "s3"
            # deploy/celery/dagster.yaml's compute logs: the daemon's sensors log through them.
            self.env["DAGSTER_COMPUTE_LOGS_PREFIX"] = f"{PREFIX}/{self.name}/_dagster/compute_logs"
            self.broker_env = {
                **self.env,
                "EXPORT_BROKER_DIR": str(self.tmp / "broker"),
                "EXPORT_BROKER_PORT": str(free_port()),
            }
            out = subprocess.run(
                [str(ROOT / "scripts" / "broker.sh"), "start"], env=self.broker_env,
                capture_output=True, text=True, timeout=300, check=True,
            ).stdout  # fmt: skip
            for line in out.splitlines():
                key, _, value = line.removeprefix("export ").partition("=")
                self.env[key] = value.strip("'")
            for n in (1, 2):
                self.start_proc(f"w{n}", [str(ROOT / "scripts" / "worker.sh"), f"w{n}", "2"])
        self.start_proc(
            "daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(self.tmp / "workspace.yaml")]
        )
        # Both modes as the README starts them: requests start on the insert's NOTIFY, not at the
        # sensor's next tick.
        self.start_proc(
            "submitter", [str(BIN / "export-pipelines"), "submitter", "-w", str(self.tmp / "workspace.yaml")]
        )

    def down(self) -> None:
        # Workers first with SIGTERM (warm shutdown), then everything the mode started, by group.
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self.broker_env:
            subprocess.run(
                [str(ROOT / "scripts" / "broker.sh"), "stop"], env=self.broker_env,
                capture_output=True, timeout=30, check=False,
            )  # fmt: skip
        drop_db(self.base_env["DAGSTER_POSTGRES_URL"], self.dagster_db)

    def pool_children(self) -> list[int]:
        return [c for name in ("w1", "w2") if name in self.procs for c in children_of(self.procs[name].pid)]

    def log_tail(self, name: str, lines: int = 30) -> str:
        text = (self.tmp / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def wait_requests(store: RequestStore, ids: list[str], timeout: float) -> tuple[dict[str, str], float]:
    start = time.monotonic()
    statuses: dict[str, str] = {}
    while True:
        statuses = {i: store.get(i).status for i in ids}  # type: ignore[union-attr]
        elapsed = time.monotonic() - start
        if all(s in DONE for s in statuses.values()) or elapsed > timeout:
            return statuses, elapsed
        time.sleep(0.25)


def scenario_1(mode: Mode, store: RequestStore, timeout: float) -> dict[str, Any]:
    tenants = [f"t-{k:03d}" for k in range(2, 22)]
    start = time.monotonic()
    ids = [store.create(tenant_id=t, resource="orders", format="csv") for t in tenants]
    statuses, elapsed = wait_requests(store, ids, timeout)
    ok = sum(s == "succeeded" for s in statuses.values())
    finished = all(s in DONE for s in statuses.values())
    result: dict[str, Any] = {
        "requests": len(ids),
        "succeeded": ok,
        "failed": sum(s == "failed" for s in statuses.values()),
        "seconds": round(time.monotonic() - start, 1),
        "finished": finished,
    }
    if not finished:
        result["note"] = f"did not finish in {timeout:.0f} s"
        # Extrapolated from what finished: let the stragglers run out before the next scenario.
        rate = ok / elapsed if ok else 0.0
        result["extrapolated_seconds"] = round(len(ids) / rate, 0) if rate else None
        wait_requests(store, ids, 600)
    result["per_minute"] = round(ok / result["seconds"] * 60, 1) if ok else 0.0
    result["max_running_at_once"] = max_overlap([store.get(i) for i in ids])
    return result


def max_overlap(rows: list[Any]) -> int:
    """The most exports running at the same moment (started_at .. completed_at of the rows)."""
    edges = []
    for row in rows:
        if row is not None and row.started_at and row.completed_at:
            edges += [(row.started_at, 1), (row.completed_at, -1)]
    running = most = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        running += step
        most = max(most, running)
    return most


# Where a request's time goes, from the request row and the run's Dagster events (in order).
STAGES = [
    ("row -> run created (submitter)", "created", "run_created"),
    ("run created -> launched (run queue)", "run_created", "RUN_STARTING"),
    ("launched -> run process started (spawn, imports, code location)", "RUN_STARTING", "RUN_START"),
    ("run started -> row succeeded (4 steps)", "RUN_START", "completed"),
    ("row succeeded -> run success event", "completed", "RUN_SUCCESS"),
]


def timeline(dagster_url: str, row: Any) -> dict[str, float]:
    """Seconds since the request row was created at which each mark was reached."""
    with psycopg.connect(dagster_url, autocommit=True) as conn:
        created = conn.execute("SELECT create_timestamp FROM runs WHERE run_id = %s", [row.run_id]).fetchone()
        events = conn.execute(
            "SELECT dagster_event_type, timestamp FROM event_logs WHERE run_id = %s "
            "AND dagster_event_type IN ('PIPELINE_STARTING', 'PIPELINE_START', 'PIPELINE_SUCCESS')",
            [row.run_id],
        ).fetchall()
    base = row.created_at.timestamp()

    def utc(naive: Any) -> float:  # Dagster stores naive UTC timestamps
        return naive.replace(tzinfo=UTC).timestamp() - base

    marks = {"created": 0.0, "completed": row.completed_at.timestamp() - base}
    if created:
        marks["run_created"] = utc(created[0])
    for kind, at in events:
        marks[kind.replace("PIPELINE_", "RUN_")] = utc(at)
    return marks


def stage_medians(timelines: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for name, start, end in STAGES:
        spans = [t[end] - t[start] for t in timelines if start in t and end in t]
        if spans:
            out[name] = round(statistics.median(spans), 3)
    return out


def scenario_2(store: RequestStore, count: int, timeout: float, dagster_url: str) -> dict[str, Any]:
    latencies: list[float] = []
    timelines: list[dict[str, float]] = []
    failures = 0
    for _ in range(count):
        time.sleep(1.0)  # idle between requests: the previous run has finished
        start = time.monotonic()
        rid = store.create(tenant_id="t-big", resource="orders", format="csv")

        def linked(rid: str = rid) -> Any:
            row = store.get(rid)
            return row if row and (row.status in DONE) else None

        row, _waited = wait_until(linked, timeout, every=0.05)
        if not row:
            return {"requests": len(latencies), "note": f"request did not finish in {timeout:.0f} s"}
        if row.status != "succeeded" or not row.download_url:
            failures += 1
            continue
        latencies.append(time.monotonic() - start)
        rows = row.rows_exported
        if row.run_id:
            timelines.append(timeline(dagster_url, row))
    lat = sorted(latencies)
    return {
        "requests": count,
        "failed": failures,
        "rows": rows if latencies else 0,
        "p50": round(statistics.median(lat), 2) if lat else None,
        "p95": round(lat[max(0, round(0.95 * len(lat)) - 1)], 2) if lat else None,
        "min": round(lat[0], 2) if lat else None,
        "max": round(lat[-1], 2) if lat else None,
        "all": [round(x, 2) for x in latencies],
        "stages_median_s": stage_medians(timelines),
    }


def scenario_3(mode: Mode, store: RequestStore, total: int, batch: int, timeout: float) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    tenants = [f"t-{k:03d}" for k in range(101, 101 + total)]
    start = time.monotonic()
    for b in range(0, total, batch):
        ids = [store.create(tenant_id=t, resource="orders", format="csv") for t in tenants[b : b + batch]]
        statuses, _ = wait_requests(store, ids, timeout)
        if not all(s in DONE for s in statuses.values()):
            return {"samples": samples, "note": f"batch {b // batch + 1} did not finish in {timeout:.0f} s"}
        time.sleep(1.0)  # the pool children are between runs now
        children = {pid: mem_kb(pid) for pid in mode.pool_children()}
        samples.append(
            {
                "after": b + len(ids),
                "succeeded": sum(s == "succeeded" for s in statuses.values()),
                "rss_mb": {str(p): round(v[0] / 1024, 1) for p, v in children.items()},
                "hwm_mb": {str(p): round(v[1] / 1024, 1) for p, v in children.items()},
            }
        )
        print(f"    scenario 3: {samples[-1]}", flush=True)
    first = max(samples[0]["rss_mb"].values())
    last = max(samples[-1]["rss_mb"].values())
    peak = max(max(s["hwm_mb"].values()) for s in samples)
    peak_first = max(samples[0]["hwm_mb"].values())
    return {
        "exports": total,
        "seconds": round(time.monotonic() - start, 1),
        "max_rss_after_first_batch_mb": first,
        "max_rss_at_end_mb": last,
        "rss_growth_pct": round((last / first - 1) * 100, 1),
        "peak_hwm_first_batch_mb": peak_first,
        "peak_hwm_mb": peak,
        "hwm_growth_pct": round((peak / peak_first - 1) * 100, 1),
        "samples": samples,
    }


def dagster_runs(mode: Mode, job: str) -> dict[str, int]:
    with psycopg.connect(mode.env["DAGSTER_POSTGRES_URL"], autocommit=True) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM runs WHERE pipeline_name = %s GROUP BY 1", [job]
        ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def scenario_4(mode: Mode, tenants: int, timeout: float) -> dict[str, Any]:
    # The smallest tenants first; 1,000 partitions are all 999 small tenants and t-big (~420 rows a month).
    names = [f"t-{k:03d}" for k in range(max(1, 1000 - tenants), 1000)]
    names += ["t-big"] * (len(names) < tenants)
    os.environ.update(mode.env)  # the instance below reads DAGSTER_HOME's yaml and its env vars
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("tenants", names)
    keys = [f"{MONTH}|{t}" for t in names]
    start = time.monotonic()
    # What `export-pipelines backfill` does: ONE backfill for the daemon, which cuts it into runs of
    # up to EXPORT_MONTHLY_BATCH_SIZE partitions (`dagster job backfill` would make a run each).
    with DagsterInstance.get() as instance:
        launch_backfill(instance, keys, workspace=mode.tmp / "workspace.yaml", print_fn=lambda _: None)
    submitted = time.monotonic() - start

    def partitions() -> tuple[int, int]:
        """(materialized, failed) partitions of the month: a run covers up to
        EXPORT_MONTHLY_BATCH_SIZE of them (monthly_asset.py), so runs are no longer the unit."""
        ok = [p for p in instance.get_materialized_partitions(MONTHLY_ASSET_KEY) if p.startswith(MONTH)]
        return len(ok), len(failed_partitions(instance, month=MONTH))

    with DagsterInstance.get() as instance:
        done, _ = wait_until(lambda: sum(partitions()) >= tenants, timeout, every=1.0)
        elapsed = time.monotonic() - start
        ok, failed = partitions()
    counts = dagster_runs(mode, "monthly_tenant_export_job")
    result: dict[str, Any] = {
        "partitions": tenants,
        "materialized": ok,
        "failed": failed,
        "backfill_cli_seconds": round(submitted, 1),
        "seconds": round(elapsed, 1),
        "runs": counts,
        "partitions_per_second": round((ok + failed) / elapsed, 2),
        "extrapolated_1000_seconds": round(1000 / ((ok + failed) / elapsed), 0) if ok + failed else None,
    }
    if not done:
        result["note"] = f"did not finish in {timeout:.0f} s ({ok + failed} of {tenants} partitions ended)"
        # Stop the backfill's remaining runs, so they do not load the next measurements.
        subprocess.run(
            [str(BIN / "python"), "-c", CANCEL_QUEUED], env=mode.env, cwd=ROOT,
            capture_output=True, timeout=300, check=False,
        )  # fmt: skip
    return result


CANCEL_QUEUED = """
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import BulkActionStatus
with DagsterInstance.get() as i:
    for b in i.get_backfills(status=BulkActionStatus.REQUESTED):
        i.update_backfill(b.with_status(BulkActionStatus.CANCELED))
    for r in i.get_runs(RunsFilter(statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED])):
        i.report_run_canceled(r)
"""


def warm_up(mode: Mode, store: RequestStore, timeout: float) -> float:
    """One export through the whole path: the daemon, its code server and the workers are up."""
    rid = store.create(tenant_id="t-999", resource="orders", format="csv")
    statuses, elapsed = wait_requests(store, [rid], timeout)
    if statuses[rid] != "succeeded":
        print(mode.log_tail("daemon"), file=sys.stderr)
        raise SystemExit(f"mode {mode.name}: warm-up export ended {statuses[rid]} after {elapsed:.0f} s")
    return elapsed


def clear_s3(env: dict[str, str]) -> None:
    client = make_s3_client(
        endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    bucket = env["EXPORT_BUCKET"]
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{PREFIX}/"):
        objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects})


@contextlib.contextmanager
def measured(results: dict[str, Any], key: str) -> Iterator[dict[str, Any]]:
    entry: dict[str, Any] = {"load_before": load()}
    print(f"  {key} (load {entry['load_before']})", flush=True)
    try:
        yield entry
    finally:
        entry["load_after"] = load()
        results[key] = entry
        print(f"  {key}: {json.dumps({k: v for k, v in entry.items() if k != 'samples'})}", flush=True)


def run_mode(
    name: str, args: argparse.Namespace, source_url: str, base_env: dict[str, str]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_tp_{name}_"))
    mode = Mode(name=name, base_env=dict(base_env), tmp=tmp)
    print(f"== mode {name} ({tmp})", flush=True)
    try:
        mode.up(source_url)
        with RequestStore(source_url).migrate_once() as store:
            results["warm_up_seconds"] = round(warm_up(mode, store, 300), 1)
            scenarios = args.scenarios
            if "1" in scenarios:
                with measured(results, "s1_20_at_once") as e:
                    e.update(scenario_1(mode, store, args.cap_a if name == "A" else args.timeout))
            if "2" in scenarios:
                with measured(results, "s2_request_to_link") as e:
                    seq = args.seq_a if name == "A" else args.seq
                    e.update(scenario_2(store, seq, 120, mode.env["DAGSTER_POSTGRES_URL"]))
            if "3" in scenarios and name == "B":
                with measured(results, "s3_worker_rss") as e:
                    e.update(scenario_3(mode, store, 100, 10, 180))
            if "4" in scenarios:
                n = args.monthly_a if name == "A" else args.monthly_tenants
                with measured(results, "s4_monthly") as e:
                    e.update(scenario_4(mode, n, args.monthly_cap_a if name == "A" else args.monthly_timeout))
    finally:
        mode.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def ratio(b: float | None, a: float | None) -> str:
    return f"{a / b:.1f}x faster" if a and b else "-"


def table(res: dict[str, dict[str, Any]]) -> str:
    a, b = res.get("A", {}), res.get("B", {})
    lines = ["| scenario | A default (DefaultRunLauncher + submitter) | B Celery (2 workers x 2) | B vs A "
             "| targets (A; B) |",
             "|---|---:|---:|---:|---|"]  # fmt: skip

    def s1(r: dict[str, Any]) -> str:
        if not r:
            return "-"
        text = f"{r['seconds']} s ({r['succeeded']}/{r['requests']} ok, {r['per_minute']}/min)"
        if not r.get("finished"):
            text = f"{r['note']}; {r['succeeded']} ok, extrapolated {r['extrapolated_seconds']} s"
        return text + f", at most {r.get('max_running_at_once')} running at once, load {r['load_before']}"

    r1a, r1b = a.get("s1_20_at_once", {}), b.get("s1_20_at_once", {})
    s1a = r1a.get("extrapolated_seconds") or r1a.get("seconds")
    lines.append(f"| 1. 20 requests / 20 tenants at once | {s1(r1a)} | {s1(r1b)} | "
                 f"{ratio(r1b.get('seconds'), s1a)} | A <= 25 s, overlapping; "
                 "B <= 12 s |")  # fmt: skip
    r2a, r2b = a.get("s2_request_to_link", {}), b.get("s2_request_to_link", {})

    def s2(r: dict[str, Any]) -> str:
        if not r or r.get("p50") is None:
            return r.get("note", "-") if r else "-"
        n = f"n={r['requests']}, {r['rows']} rows"
        return f"p50 {r['p50']} s, p95 {r['p95']} s ({n}), load {r['load_before']}"

    lines.append(f"| 2. request -> link, 10k rows, sequential | {s2(r2a)} | {s2(r2b)} | "
                 f"p50 {ratio(r2b.get('p50'), r2a.get('p50'))} | "
                 "A p50 <= 2.5 s, p95 <= 4 s; B p50 <= 1.5 s |")  # fmt: skip
    r3 = b.get("s3_worker_rss", {})
    if r3 and "rss_growth_pct" in r3:
        lines.append(
            f"| 3. pool child RSS over 100 exports | one process per run | "
            f"{r3['max_rss_after_first_batch_mb']} -> {r3['max_rss_at_end_mb']} MB "
            f"({r3['rss_growth_pct']:+} %), peak HWM {r3['peak_hwm_first_batch_mb']} -> "
            f"{r3['peak_hwm_mb']} MB ({r3['hwm_growth_pct']:+} %), "
            f"load {r3['load_before']} | - | <= +10 % after the first 10 |"
        )
    r4a, r4b = a.get("s4_monthly", {}), b.get("s4_monthly", {})

    def s4(r: dict[str, Any]) -> str:
        if not r or "seconds" not in r:
            return r.get("note", "-") if r else "-"
        runs = sum(r["runs"].values())
        text = (
            f"{r['materialized']}/{r['partitions']} partitions in {runs} runs: {r['seconds']} s "
            f"({r['partitions_per_second']} partitions/s)"
        )
        if r.get("note"):
            text = f"{r['note']}: {r['partitions_per_second']} partitions/s"
        return text + f", 1,000 extrapolated {r['extrapolated_1000_seconds']} s, load {r['load_before']}"

    # Rates, not times: B's partitions/s over A's.
    lines.append(f"| 4. monthly dumps, backfill | {s4(r4a)} | {s4(r4b)} | "
                 f"{ratio(r4a.get('partitions_per_second'), r4b.get('partitions_per_second'))} "
                 f"| B 1,000 in <= 240 s |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="A,B", help="A (today), B (Celery); default A,B")
    p.add_argument("--scenarios", default="1,2,3,4")
    p.add_argument("--timeout", type=float, default=120, help="scenario 1 timeout in B (s)")
    p.add_argument("--cap-a", type=float, default=200, help="scenario 1 cap in A (s); extrapolated beyond")
    p.add_argument("--seq", type=int, default=20, help="scenario 2 sequential requests in B")
    p.add_argument("--seq-a", type=int, default=20, help="scenario 2 sequential requests in A")
    p.add_argument("--monthly-tenants", type=int, default=100, help="scenario 4 partitions in B")
    p.add_argument("--monthly-timeout", type=float, default=900)
    p.add_argument("--monthly-a", type=int, default=20, help="scenario 4 partitions in A")
    p.add_argument("--monthly-cap-a", type=float, default=120, help="scenario 4 cap in A (s)")
    args = p.parse_args()
    base_env = dict(os.environ)  # scenario 4 points os.environ at a mode's instance
    base_url = base_env["SOURCE_DATABASE_URL"]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    source_url = recreate_db(base_url, SRC_DB)
    res: dict[str, dict[str, Any]] = {}
    try:
        with psycopg.connect(source_url, autocommit=True) as conn:
            rows = load_demo_data(conn, SIZE)
        print(f"source {SRC_DB}: {rows} orders rows, {SIZE.small_tenants} small tenants + t-big", flush=True)
        for name in args.modes.split(","):
            res[name] = run_mode(name, args, source_url, base_env)
    finally:
        drop_db(base_url, SRC_DB)
        clear_s3(base_env)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"\n{started} · {os.cpu_count()} cores · `bench/throughput.py {' '.join(sys.argv[1:])}`")
    print(f"uptime before: {uptime_before}\nuptime after:  {uptime_after}\n")
    print(table(res))
    out = ROOT / "bench" / "results" / f"throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"started": started, "argv": sys.argv[1:], "uptime_before": uptime_before,
                               "uptime_after": uptime_after, "results": res}, indent=1))  # fmt: skip
    print(f"\n{out}")


if __name__ == "__main__":
    main()
