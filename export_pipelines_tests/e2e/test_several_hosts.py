"""The Celery set-up (deploy/celery/dagster.yaml) as several machines.

The test makes a bridge and network namespaces: one "host" for the daemon and its code server, two
worker hosts (scripts/worker.sh). PostgreSQL and S3 (a scratch local_stack on the bridge address,
EXPORT_STACK_HOST) and Redis (scripts/broker.sh) listen on the host side of the bridge only, so
every host reaches them over its own veth, never over a loopback. Requests enter through the real
door: rows in export_requests, picked up by the request sensor.

It shows (a) exports spread over both workers, each request with exactly one successful run; and
(b) a worker host killed (SIGKILL of every process in its namespace) in the middle of a multi-part
upload: the liveness launcher fails the run, run retries re-run it on the other host, the export
resumes from its checkpoint (`resumed_at_part`), its files equal an undisturbed export's byte for
byte, no multipart upload stays open, the request row ends `succeeded`, and it has exactly one
successful run. Needs root, `ip netns` (scripts/test_tools.sh installs iproute2) and nsenter; skips
(saying why) only when namespaces are not allowed, and on CI (CI=true) fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.requests.catalog import load_catalog
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.storage.s3 import make_s3_client, open_uploads
from export_pipelines_dev.demo_data import DemoSize, load_demo_data, tenant_ids
from export_pipelines_tests.support.readback import read_manifest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SUBNET = "10.99.77"  # away from the research's 10.99.0.0/24 and from anything this machine uses
HOST_ADDR = f"{SUBNET}.1"
BRIDGE = "br-mh"
HOSTS = {"mh-d0": 10, "mh-w1": 11, "mh-w2": 12}  # namespace -> last octet
WORKERS = ("mh-w1", "mh-w2")
BIG = "t-big"
# 120k orders rows of the big tenant: one CSV of 3 parts of 8 MiB, the multi-part upload to kill.
SIZE = DemoSize(big_rows=120_000, small_rows=3_000, small_tenants=6)
PREFIX = "mh"
WEBHOOK_SECRET = "multi-host-webhook-secret"
# Variables that point at the shared dev stack on 127.0.0.1: none of them may leak into the hosts.
STACK_VARS = (
    "SOURCE_DATABASE_URL",
    "DAGSTER_POSTGRES_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "EXPORT_BUCKET",
    "EXPORT_PREFIX",
    "DAGSTER_HOME",
)


def sh(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def in_ns(ns: str) -> list[str]:
    """The command prefix that runs a program in the host's network namespace. nsenter switches the
    network namespace only; `ip netns exec` (and `ip -n`) also remount / and /sys, which fails where
    / is not a mount point (a chroot, some containers)."""
    return ["nsenter", f"--net=/run/netns/{ns}"]


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def netns_pids(ns: str) -> set[int]:
    result = sh("ip", "netns", "pids", ns, check=False)
    return {int(pid) for pid in result.stdout.split()}


def kill_namespace(ns: str) -> None:
    """SIGKILL every process in the namespace: the host is gone, nobody gets to say goodbye."""
    for _ in range(20):
        pids = netns_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def netns_refused() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if shutil.which("nsenter") is None:
        return "no `nsenter` command (util-linux)"
    probe = f"mh-probe-{os.getpid()}"
    result = sh("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"`ip netns add` is not permitted here: {result.stderr.strip()}"
    try:
        entered = sh(*in_ns(probe), "ip", "link", "set", "lo", "up", check=False)
        if entered.returncode != 0:
            return f"entering a network namespace is not permitted here: {entered.stderr.strip()}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


def teardown_network() -> None:
    for ns in HOSTS:
        kill_namespace(ns)
        sh("ip", "netns", "del", ns, check=False)
        # The kernel frees a deleted namespace (and with it the veth pair) asynchronously: delete
        # the bridge side too, or the next set-up can find the name still taken.
        sh("ip", "link", "del", "v" + ns.replace("-", "") + "h", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def setup_network() -> None:
    teardown_network()  # leftovers of an interrupted run
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for ns, octet in HOSTS.items():
        veth = "v" + ns.replace("-", "")  # vmhw1 (namespace side), vmhw1h (bridge side)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "h")
        sh("ip", "link", "set", veth, "netns", ns)
        sh("ip", "link", "set", veth + "h", "master", BRIDGE)
        sh("ip", "link", "set", veth + "h", "up")
        sh(*in_ns(ns), "ip", "addr", "add", f"{SUBNET}.{octet}/24", "dev", veth)
        sh(*in_ns(ns), "ip", "link", "set", veth, "up")
        sh(*in_ns(ns), "ip", "link", "set", "lo", "up")


def throttle(ns: str, rate: str | None) -> None:
    """Limit what a host sends (its uploads to S3), so that a multi-part upload lasts long enough
    to kill its host in the middle; None removes the limit."""
    veth = "v" + ns.replace("-", "")
    sh(*in_ns(ns), "tc", "qdisc", "del", "dev", veth, "root", check=False)
    if rate:
        sh(*in_ns(ns), "tc", "qdisc", "add", "dev", veth, "root", "tbf",
           "rate", rate, "burst", "64kb", "latency", "2s")  # fmt: skip


@dataclass
class Cluster:
    env: dict[str, str]
    tmp: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def source_url(self) -> str:
        return self.env["SOURCE_DATABASE_URL"]

    @property
    def dagster_url(self) -> str:
        return self.env["DAGSTER_POSTGRES_URL"]

    def start(self, name: str, ns: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it open
        self.procs[name] = subprocess.Popen(
            [*in_ns(ns), *argv],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def log(self, name: str, lines: int = 40) -> str:
        text = (self.tmp / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def celery(self) -> Any:
        from celery import Celery

        return Celery(
            "probe",
            broker=self.env["DAGSTER_CELERY_BROKER_URL"],
            backend=self.env["DAGSTER_CELERY_BACKEND_URL"],
        )

    def s3(self) -> Any:
        return make_s3_client(
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name=self.env["AWS_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def runs(self, request_id: str) -> list[dict[str, Any]]:
        """Every Dagster run of a request (retries included): id, status and Celery task id."""
        with psycopg.connect(self.dagster_url, autocommit=True) as conn:
            rows = conn.execute(
                """
                SELECT r.run_id, r.status,
                       (SELECT value FROM run_tags WHERE run_id = r.run_id
                        AND key = 'dagster-celery/task_id') AS task_id
                FROM runs r JOIN run_tags t ON t.run_id = r.run_id
                WHERE t.key = 'export/request_id' AND t.value = %s ORDER BY r.id
                """,
                [request_id],
            ).fetchall()
        return [{"run_id": r[0], "status": r[1], "task_id": r[2]} for r in rows]


def stack_env_for(stack_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in STACK_VARS}
    env.update(EXPORT_STACK_DIR=str(stack_dir), EXPORT_STACK_HOST=HOST_ADDR)
    for var in ("EXPORT_PG_PORT", "EXPORT_S3_PORT"):
        env.pop(var, None)
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    refused = netns_refused()
    if refused and os.environ.get("CI") == "true":
        # On CI the test set-up (scripts/test_tools.sh) installs what it needs: never a silent skip.
        pytest.fail(f"the several-machines test needs network namespaces: {refused}")
    if refused:
        pytest.skip(f"the several-machines test needs network namespaces: {refused}")
    tmp = tmp_path_factory.mktemp("multi_host")
    os.chmod(tmp, 0o755)
    stack_dir = tmp / "stack"
    base = stack_env_for(stack_dir)
    broker_env = {
        **base,
        "EXPORT_BROKER_DIR": str(tmp / "broker"),
        "EXPORT_BROKER_BIND": HOST_ADDR,
        "EXPORT_BROKER_PORT": "56377",
    }
    cluster = Cluster(env={}, tmp=tmp)
    try:
        setup_network()  # inside the try: a half-made network is torn down too
        # The bridge exists before the servers start: they bind its address.
        py = str(BIN / "python")
        started = subprocess.run(
            [py, "-m", "export_pipelines_dev", "stack", "start"], env=base, cwd=ROOT,
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr + started.stdout
        stack = subprocess.run(
            [py, "-m", "export_pipelines_dev", "stack", "env"], env=base, cwd=ROOT,
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        broker = subprocess.run(
            [str(ROOT / "scripts" / "broker.sh"), "start"], env=broker_env,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert broker.returncode == 0, broker.stderr
        env = dict(base)
        for line in (stack + broker.stdout).splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip("'")
        assert HOST_ADDR in env["SOURCE_DATABASE_URL"] and HOST_ADDR in env["AWS_ENDPOINT_URL"]
        assert HOST_ADDR in env["DAGSTER_CELERY_BROKER_URL"]
        home = tmp / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text((ROOT / "deploy" / "celery" / "dagster.yaml").read_text())
        workspace = tmp / "workspace.yaml"
        workspace.write_text(
            "load_from:\n  - python_module:\n      module_name: export_pipelines.definitions\n"
            "      location_name: export_pipelines\n"
        )
        env.update(
            DAGSTER_HOME=str(home),
            EXPORT_PREFIX=PREFIX,
            # Every host's (docs/operations.md): the daemon's sensors log through it.
            DAGSTER_COMPUTE_LOGS_PREFIX=f"{PREFIX}/_dagster/compute_logs",
            EXPORT_IO_MANAGER="s3",
            EXPORT_WEBHOOK_SECRET=WEBHOOK_SECRET,
            EXPORT_SENSOR_INTERVAL_SECONDS="2",
            # This checkout first (it may not be the one pip installed), then the workers' Celery settings.
            PYTHONPATH=f"{ROOT}:{ROOT / 'deploy' / 'celery'}",
        )
        cluster.env = env
        with psycopg.connect(cluster.source_url, autocommit=True) as conn:
            load_demo_data(conn, SIZE)
        cluster.s3().head_bucket(Bucket=env["EXPORT_BUCKET"])
        cluster.start("daemon", "mh-d0", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])
        for n, ns in enumerate(WORKERS, 1):
            cluster.start(ns, ns, [str(ROOT / "scripts" / "worker.sh"), f"w{n}", "2"])
        app = cluster.celery()
        try:
            wait_until(
                lambda: len(app.control.ping(timeout=1.0)) == len(WORKERS), 120, "both workers to answer"
            )
        finally:
            app.close()
        yield cluster
    finally:
        for proc in cluster.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        teardown_network()
        for proc in cluster.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        subprocess.run(
            [str(ROOT / "scripts" / "broker.sh"), "stop"], env=broker_env, capture_output=True, timeout=30,
            check=False,
        )  # fmt: skip
        subprocess.run(
            [str(BIN / "python"), "-m", "export_pipelines_dev", "stack", "destroy"], env=base, cwd=ROOT,
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip


def wait_for_rows(store: RequestStore, ids: list[str], timeout: float, cluster: Cluster) -> list[Any]:
    def done() -> list[Any] | None:
        rows = [store.get(i) for i in ids]
        return rows if all(r.status in ("succeeded", "failed") for r in rows) else None

    try:
        return wait_until(done, timeout, f"{len(ids)} requests to finish", every=0.5)
    except AssertionError:
        print(cluster.log("daemon"), cluster.log("mh-w1"), cluster.log("mh-w2"), sep="\n----\n")
        raise


def worker_of(cluster: Cluster, task_id: str) -> str:
    """The Celery node (w1@..., w2@...) that ran a run's task, from the extended result."""
    app = cluster.celery()
    try:
        return app.AsyncResult(task_id).worker or ""
    finally:
        app.close()


def assert_one_successful_run_each(cluster: Cluster, request_ids: list[str]) -> dict[str, list[dict]]:
    # The request row is `succeeded` a moment before the run's own status: wait for the runs too.
    def settled() -> dict[str, list[dict]] | None:
        runs = {rid: cluster.runs(rid) for rid in request_ids}
        done = all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for rs in runs.values() for r in rs)
        return runs if done else None

    runs = wait_until(settled, 60, "the runs to finish", every=0.5)
    for rid, rows in runs.items():
        assert [r["status"] for r in rows].count("SUCCESS") == 1, (rid, rows)
    return runs


def test_exports_spread_over_worker_hosts(cluster: Cluster) -> None:
    tenants = [t for t in tenant_ids(SIZE) if t != BIG][:6]
    assert len(tenants) == 6
    with RequestStore(cluster.source_url).migrate_once() as store:
        ids = [store.create(tenant_id=t, resource="orders", format="csv") for t in tenants]
        started = time.monotonic()
        rows = wait_for_rows(store, ids, 150, cluster)
    took = time.monotonic() - started
    assert [r.status for r in rows] == ["succeeded"] * len(ids), [r.error for r in rows]
    runs = assert_one_successful_run_each(cluster, ids)
    nodes = {worker_of(cluster, r["task_id"]).split("@")[0] for rs in runs.values() for r in rs}
    print(f"\n{len(ids)} exports in {took:.1f}s, run by {sorted(nodes)}")
    assert nodes == {"w1", "w2"}


def checkpoint(cluster: Cluster, folder: str) -> tuple[str | None, int]:
    with psycopg.connect(cluster.source_url, autocommit=True) as conn:
        row = conn.execute("SELECT worker FROM export_checkpoints WHERE folder = %s", [folder]).fetchone()
        parts = conn.execute(
            "SELECT count(*) FROM export_checkpoint_parts WHERE folder = %s", [folder]
        ).fetchone()[0]
    return (row[0] if row else None), parts


def clean_digests(cluster: Cluster) -> list[str]:
    """The files of an undisturbed export of the same request, made here without Dagster."""
    catalog = load_catalog()
    request = build_request(
        catalog, export_id="clean", tenant_id=BIG, resource="orders", format="csv", compression="none"
    )
    plan = plan_export(cluster.source_url, catalog, request, f"{PREFIX}-clean")
    outcome = run_export(
        plan, conninfo=cluster.source_url, catalog=catalog, s3_client=cluster.s3(),
        bucket=cluster.env["EXPORT_BUCKET"],
    )  # fmt: skip
    return [f.sha256 for f in outcome.files]


def test_worker_host_killed_mid_upload_resumes_on_the_other(cluster: Cluster) -> None:
    client = cluster.s3()
    bucket = cluster.env["EXPORT_BUCKET"]
    for ns in WORKERS:  # ~3 MB/s out of each host: an 8 MiB part takes ~3 s to upload
        throttle(ns, "24mbit")
    try:
        with RequestStore(cluster.source_url).migrate_once() as store:
            rid = store.create(tenant_id=BIG, resource="orders", format="csv", compression="none")
            folder = f"{PREFIX}/tenant={BIG}/orders/{rid}/"
            # Part 1 is checkpointed, the rest of the file is still on its way.
            wait_until(lambda: checkpoint(cluster, folder)[1] >= 1, 120, "part 1's checkpoint", every=0.05)
            worker, parts = checkpoint(cluster, folder)
            assert worker, "the checkpoint names no worker"
            pid = int(worker.rsplit(":", 1)[1])
            victim = next(ns for ns in WORKERS if pid in netns_pids(ns))
            kill_namespace(victim)
            killed_at = time.monotonic()
            row = wait_for_rows(store, [rid], 180, cluster)[0]
        recovered = time.monotonic() - killed_at
    finally:
        for ns in WORKERS:
            throttle(ns, None)
    assert row.status == "succeeded", row.error
    survivor = next(ns for ns in WORKERS if ns != victim)
    runs = assert_one_successful_run_each(cluster, [rid])[rid]
    print(
        f"\nkilled {victim} (pid {pid}) after {parts} part(s); succeeded {recovered:.1f}s later; runs {runs}"
    )
    assert [r["status"] for r in runs] == ["FAILURE", "SUCCESS"], runs
    assert worker_of(cluster, runs[-1]["task_id"]).startswith("w" + survivor[-1] + "@")

    manifest = read_manifest(client, bucket, row.manifest_key)
    assert any(f.get("resumed_at_part", 0) >= 2 for f in manifest["files"]), manifest["files"]
    expected = clean_digests(cluster)
    assert [f["sha256"] for f in manifest["files"]] == expected
    digests = [
        hashlib.sha256(client.get_object(Bucket=bucket, Key=f["key"])["Body"].read()).hexdigest()
        for f in manifest["files"]
    ]
    assert digests == expected
    assert row.rows_exported == manifest["rows_total"] == row.rows_total > 100_000
    assert open_uploads(client, bucket, folder) == []
    # The dead host's run was failed by the liveness check, not left STARTED.
    with psycopg.connect(cluster.dagster_url, autocommit=True) as conn:
        messages = [
            r[0]
            for r in conn.execute(
                "SELECT event FROM event_logs WHERE run_id = %s AND event LIKE %s",
                [runs[0]["run_id"], "%worker host lost%"],
            )
        ]
    assert messages, "the failed run does not say its worker host was lost"
