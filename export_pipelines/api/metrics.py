"""The export API's own Prometheus metrics: each HTTP answer by route and status, its latency, and
each error answer by its stable code (`too_many_active_exports` is the tenant cap's refusal).

They are served on a listener of their own (`export-pipelines serve --metrics-port`, loopback by
default), never on the tenants' port, so no tenant can read other tenants' traffic. With several
uvicorn workers each worker writes its samples to a directory shared with the serving process
(prometheus-client's multiprocess mode), which adds them up per scrape (docs/operations.md#monitoring).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

REQUESTS = Counter(
    "export_api_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "export_api_request_duration_seconds",
    "Time to answer, by method and route template (an event stream counts until it closes).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ERRORS = Counter(
    "export_api_errors",
    "Error answers by HTTP status and the error's code (too_many_active_exports: the tenant cap).",
    ["status", "code"],
)
UNMATCHED = "unmatched"  # no route: one label value, whatever path was asked for


def count_error(status: int, code: str) -> None:
    ERRORS.labels(str(status), code).inc()


class MetricsMiddleware:
    """Counts every HTTP answer (pure ASGI: streaming answers are not buffered). The route label is
    the matched route's template (`/v1/exports/{export_id}`), never the path, so ids never become
    label values."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 500, "counted": False}

        def count() -> None:
            if not state["counted"]:
                state["counted"] = True
                route = getattr(scope.get("route"), "path", None) or UNMATCHED
                REQUESTS.labels(scope["method"], route, str(state["status"])).inc()
                LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                count()  # before the last byte leaves: a client that has its answer finds it counted
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            count()  # no answer at all (the client went away, an error before the start)


def serve_metrics(host: str, port: int, multiprocess_dir: str | None) -> Any:
    """Serve /metrics on host:port in a thread; returns the server (`.shutdown()`). With
    `multiprocess_dir` the samples every worker wrote there are added up; without, this process's."""
    registry: CollectorRegistry = REGISTRY
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
