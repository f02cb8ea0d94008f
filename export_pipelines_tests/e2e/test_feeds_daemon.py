"""Feeds with a real `dagster-daemon` (sensors, run queue, run monitoring, run retries, as deployed):

- the feed sensor makes a due feed's delivery and the request sensor runs it; once the feed sensor
  is stopped in Dagster (`dagster sensor stop`, what the UI's toggle does) a due feed gets nothing,
  and started again it delivers;
- a delivery's run worker SIGKILLed after a part is uploaded: Dagster fails the run (the code
  server sees its worker die), run retries re-executes it from the failed step, which reads in a
  fresh snapshot from the same previous delivery, the delivery succeeds with no upload left open,
  and replaying every delivery of the feed by primary key gives the source table, key by key and
  value by value, with writes committed while the killed attempt ran and a transaction left open
  across a delivery.

The feed reads a table of its own (an extra catalog resource), so its writes touch no other test's
rows, with rows wide enough that a delivery has several 8 MiB parts.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.rows import dict_row

from export_pipelines.core.engine.change_tracking import install
from export_pipelines.core.engine.query import connect
from export_pipelines.core.requests.catalog import load_catalog, parse_catalog
from export_pipelines.core.requests.feed_store import FeedStore, check_feed, start_delivery
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines.orchestration.feed_sensor import FEED_SENSOR_NAME
from export_pipelines_tests.support.daemon import ROOT, running_daemon, wait_for
from export_pipelines_tests.support.readback import read_manifest
from export_pipelines_tests.support.s3_fault_proxy import S3FaultProxy, hang

RESOURCE = "feed_items"
TABLE = "feed_replay_items"
ROWS = 100_000  # ~21 MB of CSV: three 8 MiB parts for a full delivery
SENSOR_TENANT = "t-017"
REPLAY_TENANT = "t-018"
COLUMNS = ["id", "tenant_id", "val", "payload"]
# The feed sensor ticks every 30 s at most (orchestration/feed_sensor.py): a stopped sensor is
# watched for longer than that.
FEED_TICK_SECONDS = 30


def catalog_file(path: Path) -> Path:
    data = yaml.safe_load((ROOT / "export_pipelines" / "catalog.yaml").read_text())
    data["resources"][RESOURCE] = {
        "table": f"public.{TABLE}",
        "tenant_column": "tenant_id",
        "key": "id",
        "columns": COLUMNS,
        "change_tracking": True,
        "primary_key": ["tenant_id", "id"],
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory) -> Path:
    return catalog_file(tmp_path_factory.mktemp("feeds_daemon") / "catalog.yaml")


@pytest.fixture(scope="module")
def feed_catalog(catalog_path):
    return parse_catalog(yaml.safe_load(catalog_path.read_text()), str(catalog_path))


@pytest.fixture(scope="module")
def proxy(stack_env) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as p:
        yield p


@pytest.fixture(scope="module")
def daemon(
    stack_env, source_url, bucket, proxy, catalog_path, feed_catalog, tmp_path_factory
) -> Iterator[dict[str, str]]:
    load_catalog(catalog_path)  # a broken catalog fails here, not as a daemon that never launches
    with RequestStore(source_url).migrate_once() as store:
        # This daemon runs every pending row and every due feed: leave only this module's.
        store.execute("TRUNCATE export_requests, export_deliveries")
        store.execute("DELETE FROM export_feeds")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS public.{TABLE}")
        conn.execute(
            f"CREATE TABLE public.{TABLE} (tenant_id text NOT NULL, id bigint NOT NULL, val int NOT NULL, "
            "payload text NOT NULL, PRIMARY KEY (tenant_id, id))"
        )
        conn.execute(
            f"INSERT INTO public.{TABLE} SELECT t, g, g, repeat(md5(g::text), 6) "
            "FROM unnest(%s::text[]) t, generate_series(1, %s) g",
            [[SENSOR_TENANT, REPLAY_TENANT], ROWS],
        )
    install(source_url, feed_catalog.resource(RESOURCE))
    home = tmp_path_factory.mktemp("dagster_home_feeds")
    with running_daemon(
        stack_env,
        source_url,
        bucket,
        home,
        "dagster_feeds",
        AWS_ENDPOINT_URL=proxy.endpoint_url,
        EXPORT_CATALOG=str(catalog_path),
    ) as env:
        yield env


def new_feed(source_url: str, catalog: Any, tenant: str, frequency: str) -> str:
    fields = check_feed(
        catalog,
        (),
        {
            "tenant_id": tenant,
            "resource": RESOURCE,
            "format": "csv",
            "compression": "none",
            "frequency": frequency,
        },
    )
    with FeedStore(source_url) as feeds:
        return feeds.create(fields).id


def deliveries(source_url: str, feed_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(source_url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT id::text, sequence, status, run_id, manifest_key FROM export_requests "
            "WHERE feed_id = %s ORDER BY sequence",
            [feed_id],
        ).fetchall()


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


def make_due(source_url: str, feed_id: str) -> None:
    with FeedStore(source_url) as feeds:
        feeds.execute(
            "UPDATE export_feeds SET next_due_at = %s WHERE id = %s",
            [datetime.now(UTC) - timedelta(minutes=1), feed_id],
        )


def sensor_cli(env: dict[str, str], verb: str) -> None:
    """`dagster sensor start|stop`: the instance's sensor state, as the UI's toggle sets it."""
    subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "sensor",
            verb,
            FEED_SENSOR_NAME,
            "-w",
            str(ROOT / "workspace.yaml"),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_the_feed_sensor_delivers_due_feeds_until_stopped_in_dagster(daemon, source_url, feed_catalog):
    feed_id = new_feed(source_url, feed_catalog, SENSOR_TENANT, "hourly")
    make_due(source_url, feed_id)
    first = wait_until(
        lambda: deliveries(source_url, feed_id), 3 * FEED_TICK_SECONDS, "the feed sensor's delivery"
    )
    assert [d["sequence"] for d in first] == [1]
    with RequestStore(source_url) as store:
        row, _ = wait_for(store, first[0]["id"], timeout=240)
    assert row.status == "succeeded", row.error
    assert row.run_id is not None and row.manifest_key is not None  # the request sensor's run made it
    with FeedStore(source_url) as feeds:
        feed = feeds.get(SENSOR_TENANT, feed_id)
    assert feed is not None and feed.next_due_at is not None and feed.next_due_at > datetime.now(UTC)

    # Stopped first, then due: a tick that was under way when it stopped found nothing due.
    sensor_cli(daemon, "stop")
    make_due(source_url, feed_id)
    time.sleep(FEED_TICK_SECONDS + 15)
    assert [d["sequence"] for d in deliveries(source_url, feed_id)] == [1]

    sensor_cli(daemon, "start")
    again = wait_until(
        lambda: [d for d in deliveries(source_url, feed_id) if d["sequence"] == 2],
        3 * FEED_TICK_SECONDS,
        "the delivery once the sensor runs again",
    )
    with RequestStore(source_url) as store:
        row, _ = wait_for(store, again[0]["id"], timeout=240)
    assert row.status == "succeeded", row.error
    with FeedStore(source_url) as feeds:
        feeds.delete(SENSOR_TENANT, feed_id)  # not due again while the next test runs


def run_worker_pid(env: dict[str, str], run_id: str) -> int | None:
    """The run worker's pid, as the run's event log states it ("... in process (pid: N)"); steps run
    in the run worker (in_process_executor)."""
    with psycopg.connect(env["DAGSTER_POSTGRES_URL"], autocommit=True) as conn:
        events = conn.execute(
            "SELECT event FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ENGINE_EVENT' "
            "ORDER BY id",
            [run_id],
        ).fetchall()
    for (event,) in events:
        found = re.search(r"in process \(pid: (\d+)\)", event)
        if found:
            return int(found.group(1))
    return None


def run_id_of(source_url: str, request_id: str) -> str | None:
    with RequestStore(source_url) as store:
        row = store.get(request_id)
    return row.run_id if row else None


def run_status(env: dict[str, str], run_id: str) -> str | None:
    with psycopg.connect(env["DAGSTER_POSTGRES_URL"], autocommit=True) as conn:
        row = conn.execute("SELECT status FROM runs WHERE run_id = %s", [run_id]).fetchone()
    return row[0] if row else None


def runs_retrying(env: dict[str, str], run_id: str) -> list[str]:
    with psycopg.connect(env["DAGSTER_POSTGRES_URL"], autocommit=True) as conn:
        rows = conn.execute(
            "SELECT run_id FROM run_tags WHERE key = 'dagster/parent_run_id' AND value = %s", [run_id]
        ).fetchall()
    return [r[0] for r in rows]


def run_tags(env: dict[str, str], run_id: str) -> dict[str, str]:
    with psycopg.connect(env["DAGSTER_POSTGRES_URL"], autocommit=True) as conn:
        rows = conn.execute("SELECT key, value FROM run_tags WHERE run_id = %s", [run_id]).fetchall()
    return dict(rows)


def delivered_rows(s3_client: Any, bucket: str, manifest_key: str) -> tuple[str, list[dict[str, str]]]:
    manifest = read_manifest(s3_client, bucket, manifest_key)
    rows: list[dict[str, str]] = []
    for f in manifest["files"]:
        body = s3_client.get_object(Bucket=bucket, Key=f["key"])["Body"].read().decode()
        rows.extend(csv.DictReader(io.StringIO(body)))
    assert len(rows) == manifest["changes"]["upserts"] + manifest["changes"]["deletes"]
    return manifest["changes"]["mode"], rows


def source_rows(source_url: str, tenant: str) -> dict[str, tuple[str, ...]]:
    """The table as CSV text, rendered with the export session's settings, as the files are."""
    with connect(source_url) as conn:
        out = io.StringIO()
        with conn.cursor().copy(
            f"COPY (SELECT {', '.join(COLUMNS)} FROM public.{TABLE} WHERE tenant_id = %s) "
            "TO STDOUT (FORMAT csv)",
            [tenant],
        ) as copy:
            for chunk in copy:
                out.write(bytes(chunk).decode())
    return {r[0]: tuple(r[1:]) for r in csv.reader(io.StringIO(out.getvalue()))}


def replay(deliveries_rows: list[tuple[str, list[dict[str, str]]]]) -> dict[str, tuple[str, ...]]:
    """What the tenant holds after applying the deliveries in sequence: full replaces, incremental
    merges by key."""
    held: dict[str, tuple[str, ...]] = {}
    for mode, rows in deliveries_rows:
        keys = [r["id"] for r in rows]
        assert len(keys) == len(set(keys)), "a key appears twice in one delivery"
        if mode == "full":
            held = {}
        for r in rows:
            if r["_op"] == "upsert":
                held[r["id"]] = tuple(r[c] for c in COLUMNS[1:])
            else:
                assert r["_op"] == "delete" and r["payload"] == ""
                held.pop(r["id"], None)
    return held


def test_a_killed_delivery_is_retried_and_no_later_delivery_skips_a_change(
    daemon, proxy, source_url, feed_catalog, s3_client, bucket
):
    t = REPLAY_TENANT
    feed_id = new_feed(source_url, feed_catalog, t, "manual")
    with FeedStore(source_url) as feeds:
        feed = feeds.get(t, feed_id)
    assert feed is not None

    def deliver() -> str:
        with psycopg.connect(source_url, autocommit=True, row_factory=dict_row) as conn:
            return str(start_delivery(conn, feed).id)

    writes = psycopg.connect(source_url, autocommit=True)
    held_open = psycopg.connect(source_url)  # a transaction left open across a delivery
    try:
        first = deliver()
        with RequestStore(source_url) as store:
            row, _ = wait_for(store, first, timeout=240)
        assert row.status == "succeeded", row.error

        # Enough changed rows for a delivery of two parts, deletes and inserts among them.
        writes.execute(f"UPDATE {TABLE} SET val = val + 1 WHERE tenant_id = %s AND id %% 5 <> 0", [t])
        writes.execute(f"DELETE FROM {TABLE} WHERE tenant_id = %s AND id %% 997 = 0", [t])
        writes.execute(
            f"INSERT INTO {TABLE} SELECT %s, g, -g, 'new' FROM generate_series(%s, %s) g",
            [t, ROWS + 1, ROWS + 50],
        )
        held_open.execute(f"UPDATE {TABLE} SET val = 424242 WHERE tenant_id = %s AND id = 10", [t])

        # Delivery 2: hold its second part, then kill the run worker; part 1 is uploaded by then.
        action = hang()
        second = deliver()
        rule = proxy.add_fault(
            lambda r: r.operation == "UploadPart" and r.part_number == 2 and f"/{second}/" in (r.key or ""),
            action,
        )
        try:
            wait_until(lambda: rule.fired == 1, 240, "delivery 2's second part")
            killed_run = wait_until(lambda: run_id_of(source_url, second), 30, "the run id")
            pid = wait_until(lambda: run_worker_pid(daemon, killed_run), 30, "the run worker's pid")
            # Committed while the killed attempt ran: in its snapshot or not, never lost.
            writes.execute(f"UPDATE {TABLE} SET payload = 'during' WHERE tenant_id = %s AND id = 7", [t])
            writes.execute(f"DELETE FROM {TABLE} WHERE tenant_id = %s AND id = 3", [t])
            # This daemon's run worker: in the session the daemon was started in.
            assert b"dagster-daemon" in Path(f"/proc/{os.getsid(pid)}/cmdline").read_bytes()
            os.kill(pid, signal.SIGKILL)
        finally:
            action.release()  # the held request is reset, never forwarded
        held_open.commit()  # committed once the killed attempt's snapshot was taken
        with RequestStore(source_url) as store:
            row, _ = wait_for(store, second, timeout=300)
        assert row.status == "succeeded", row.error
        # Run retries re-executed the killed run from its failure (the row keeps the first run's id).
        assert run_status(daemon, killed_run) == "FAILURE"
        (retry,) = runs_retrying(daemon, killed_run)
        assert run_tags(daemon, retry).get("dagster/retry_number") == "1"
        # The row is committed `succeeded` by the run's last step, a moment before the run ends.
        wait_until(lambda: run_status(daemon, retry) in ("SUCCESS", "FAILURE"), 60, "the retry to end")
        assert run_status(daemon, retry) == "SUCCESS"
        folder = row.manifest_key.rsplit("/", 1)[0] + "/"
        assert open_uploads(s3_client, bucket, folder) == []  # the killed attempt's upload is gone

        # Delivery 3 covers what changed after delivery 2's (retried) snapshot, and a transaction
        # open while delivery 2 ran.
        held_open.execute(f"UPDATE {TABLE} SET payload = 'open across' WHERE tenant_id = %s AND id = 11", [t])
        writes.execute(f"UPDATE {TABLE} SET payload = 'after' WHERE tenant_id = %s AND id = 12", [t])
        writes.execute(f"INSERT INTO {TABLE} VALUES (%s, 3, 33, 'reinserted')", [t])
        third = deliver()
        with RequestStore(source_url) as store:
            row, _ = wait_for(store, third, timeout=240)
        assert row.status == "succeeded", row.error
        held_open.commit()
        fourth = deliver()
        with RequestStore(source_url) as store:
            row, _ = wait_for(store, fourth, timeout=240)
        assert row.status == "succeeded", row.error
    finally:
        held_open.close()
        writes.close()

    made = deliveries(source_url, feed_id)
    assert [(d["sequence"], d["status"]) for d in made] == [(n, "succeeded") for n in (1, 2, 3, 4)]
    delivered = [delivered_rows(s3_client, bucket, d["manifest_key"]) for d in made]
    assert [mode for mode, _ in delivered] == ["full", "incremental", "incremental", "incremental"]
    source = source_rows(source_url, t)
    held = replay(delivered)
    assert held.keys() == source.keys()
    assert held == source
    assert held["11"][2] == "open across" and held["3"] == (t, "33", "reinserted")
    print(
        "\ndeliveries (rows): "
        + json.dumps([len(rows) for _, rows in delivered])
        + f"; killed run {killed_run}, retried as {retry}"
    )
