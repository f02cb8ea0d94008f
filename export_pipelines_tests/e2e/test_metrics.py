"""Operators see the service: both /metrics endpoints — the export API's (`export-pipelines serve
--workers 2 --metrics-port`) and the Dagster side's (`export-pipelines metrics`) — scraped before,
during and after a real export run by the real daemon, and the numbers move as the export does:
requests by state and tenant class, runs by format and outcome, duration and bytes, the queue's
wait, a cap refusal, delivery attempts and failures, API answers added up over both workers."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.storage.migrations.request_table import DEFAULT_TENANT_MAX_ACTIVE
from export_pipelines.orchestration.metrics import BYTES_BOUNDS
from export_pipelines_tests.support.api_helpers import UNLIMITED, auth, free_port, key_for, migrate_api
from export_pipelines_tests.support.daemon import ROOT, running_daemon
from export_pipelines_tests.support.s3_fault_proxy import S3FaultProxy, hang

BIG = "t-big"  # an enterprise tenant of the demo data, with enough rows for several parts
CLI = str(Path(sys.executable).parent / "export-pipelines")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class FailingReceiver:
    """A webhook receiver that answers 500: every delivery attempt to it fails."""

    def __init__(self) -> None:
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.hits += 1
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def proxy(stack_env) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as p:
        yield p


@pytest.fixture(scope="module")
def daemon(stack_env, source_url, bucket, proxy, tmp_path_factory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("dagster_home_metrics")
    migrate_api(source_url)
    with RequestStore(source_url) as store:
        store.set_tenant_max_active(1)  # one active export per tenant: the second is refused
    try:
        with running_daemon(
            stack_env,
            source_url,
            bucket,
            home,
            "dagster_metrics",
            AWS_ENDPOINT_URL=proxy.endpoint_url,
            EXPORT_WEBHOOK_ALLOW_PRIVATE="1",
            EXPORT_TENANT_MAX_ACTIVE="1",
        ) as env:
            yield env
    finally:
        with RequestStore(source_url) as store:
            store.set_tenant_max_active(DEFAULT_TENANT_MAX_ACTIVE)


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], ready: Callable[[], bool], log: Path) -> Iterator[None]:
    """A command of ours, stopped (SIGTERM, then SIGKILL) at the end; waits until `ready`."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([CLI, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not ready():
                assert proc.poll() is None, f"{args[0]} exited: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{args[0]} not ready in 120 s: {log.read_text()[-3000:]}"
                time.sleep(0.3)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=60) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 for a series not (yet) exported."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def call(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=auth(token))
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def until(what: str, condition: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_both_metrics_endpoints_move_with_a_real_export(daemon, proxy, source_url, store, tmp_path):
    # Two API workers verify each other's stream tokens only with one secret (the API refuses to start
    # without it); the rate limits have tests of their own.
    env = {
        **daemon,
        **UNLIMITED,
        "EXPORT_WEBHOOK_ALLOW_PRIVATE": "1",
        "EXPORT_API_TOKEN_SECRET": "metrics-test-secret-of-at-least-32-characters",
    }
    api_port, api_metrics_port, metrics_port = free_port(), free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    api_metrics = f"http://127.0.0.1:{api_metrics_port}/metrics"
    service_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    token = key_for(source_url, BIG)
    receiver = FailingReceiver()
    hold = hang()  # part 2 of the export waits here: the export is running while we look
    rule = proxy.add_fault(lambda r: r.operation == "UploadPart" and r.part_number == 2, hold)
    serve = ["serve", "--port", str(api_port), "--workers", "2", "--metrics-port", str(api_metrics_port)]
    exporter = ["metrics", "--port", str(metrics_port), "--min-interval", "0"]
    try:
        with (
            process(serve, env, lambda: answers(f"{api}/healthz"), tmp_path / "api.log"),
            process(exporter, env, lambda: answers(service_metrics), tmp_path / "metrics.log"),
        ):
            before, api_before = scrape(service_metrics), scrape(api_metrics)
            assert value(before, "export_metrics_source_up", source="database") == 1
            assert value(before, "export_metrics_source_up", source="dagster") == 1

            status, doc = call(
                "POST", f"{api}/v1/exports", token,
                {"resource": "orders", "format": "csv", "compression": "none",
                 "notify": {"webhook_url": receiver.url}},
            )  # fmt: skip
            assert status == 202, doc
            rid = doc["id"]
            until("the export to upload part 2", lambda: rule.fired >= 1)

            # During the export: it is running, its run started, nothing of it finished yet.
            during = scrape(service_metrics)
            running = ("export_requests", {"state": "running", "tenant_class": "enterprise"})
            assert value(during, running[0], **running[1]) == value(before, running[0], **running[1]) + 1
            assert value(during, "export_dagster_runs", status="STARTED") >= 1
            started = {"format": "csv", "outcome": "started"}
            assert (
                value(during, "export_runs_total", **started)
                == value(before, "export_runs_total", **started) + 1
            )
            for unfinished in ("export_duration_seconds_count", "export_size_bytes_count"):
                assert value(during, unfinished, format="csv") == value(before, unfinished, format="csv")
            wait_count = value(during, "export_request_wait_seconds_count", format="csv")
            assert wait_count == value(before, "export_request_wait_seconds_count", format="csv") + 1

            # A second export of the same tenant is over its cap of 1 active export: refused, and
            # counted by both sides.
            status, doc = call("POST", f"{api}/v1/exports", token, {"resource": "orders", "format": "csv"})
            assert status == 429, doc
            refused = scrape(service_metrics)
            cap = {"reason": "tenant_active_cap"}
            assert (
                value(refused, "export_refusals_total", **cap)
                == value(before, "export_refusals_total", **cap) + 1
            )

            # Status reads, answered by either worker, add up in the one /metrics.
            for _ in range(20):
                assert call("GET", f"{api}/v1/exports/{rid}", token)[0] == 200
            api_during = scrape(api_metrics)
            get_ok = {"method": "GET", "route": "/v1/exports/{export_id}", "status": "200"}
            assert value(api_during, "export_api_requests_total", **get_ok) == (
                value(api_before, "export_api_requests_total", **get_ok) + 20
            )
            created = {"method": "POST", "route": "/v1/exports", "status": "202"}
            assert value(api_during, "export_api_requests_total", **created) == (
                value(api_before, "export_api_requests_total", **created) + 1
            )
            too_many = {"status": "429", "code": "too_many_active_exports"}
            assert value(api_during, "export_api_errors_total", **too_many) == (
                value(api_before, "export_api_errors_total", **too_many) + 1
            )
            latency = {"method": "GET", "route": "/v1/exports/{export_id}"}
            assert value(api_during, "export_api_request_duration_seconds_count", **latency) == (
                value(api_before, "export_api_request_duration_seconds_count", **latency) + 20
            )

            hold.release()  # S3 answers again: the export finishes
            until("the export to succeed", lambda: store.get(rid).status == "succeeded")
            row = store.get(rid)

            def finished() -> bool:
                after = scrape(service_metrics)
                ok = {"format": "csv", "outcome": "succeeded"}
                attempts = {"channel": "webhook", "event": "export.succeeded"}
                return (
                    value(after, "export_runs_total", **ok) == value(before, "export_runs_total", **ok) + 1
                    and value(after, "export_delivery_failures_total", **attempts)
                    >= value(before, "export_delivery_failures_total", **attempts) + 1
                )

            until("the run's success and the failed delivery attempt in the metrics", finished)
            after = scrape(service_metrics)
    finally:
        hold.release()
        receiver.close()

    done = {"state": "succeeded", "tenant_class": "enterprise"}
    assert value(after, "export_requests", **done) == value(before, "export_requests", **done) + 1
    assert value(after, running[0], **running[1]) == value(before, running[0], **running[1])
    assert value(after, "export_duration_seconds_count", format="csv") == (
        value(before, "export_duration_seconds_count", format="csv") + 1
    )
    took = value(after, "export_duration_seconds_sum", format="csv") - value(
        before, "export_duration_seconds_sum", format="csv"
    )
    assert took == pytest.approx((row.completed_at - row.started_at).total_seconds(), abs=0.01)
    assert value(after, "export_size_bytes_count", format="csv") == (
        value(before, "export_size_bytes_count", format="csv") + 1
    )
    wrote = value(after, "export_size_bytes_sum", format="csv") - value(
        before, "export_size_bytes_sum", format="csv"
    )
    assert wrote == row.bytes_written > 0
    # The export falls in the first bucket its size does not exceed, and in none below it.
    first = min(b for b in BYTES_BOUNDS if b >= row.bytes_written)
    for bound in BYTES_BOUNDS:
        le = {"format": "csv", "le": str(int(bound))}
        moved = value(after, "export_size_bytes_bucket", **le) - value(
            before, "export_size_bytes_bucket", **le
        )
        assert moved == (1 if bound >= first else 0), bound
    attempts = {"channel": "webhook", "event": "export.succeeded"}
    assert value(after, "export_delivery_attempts_total", **attempts) >= (
        value(before, "export_delivery_attempts_total", **attempts) + 1
    )
    assert receiver.hits >= 1
    assert value(after, "export_deliveries", channel="webhook", status="delivered") == value(
        before, "export_deliveries", channel="webhook", status="delivered"
    )

    # The dashboard and the documented alert rules query only metrics the endpoints serve.
    served = {name for name, _ in after} | {name for name, _ in api_during}
    assert not [name for name in queried_metrics() if name not in served]


def queried_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "docs/assets/grafana/export-pipelines.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    operations = (ROOT / "docs/operations.md").read_text()
    rules = operations[operations.index("groups:\n  - name: export_pipelines") :]
    exprs.append(rules[: rules.index("```")])
    names = {m for e in exprs for m in re.findall(r"\bexport_[a-z_]+\b", e)}
    names -= {"export_pipelines"}  # the rule group's name
    assert len(names) > 15, names
    return names
