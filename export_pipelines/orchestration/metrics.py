"""What `export-pipelines metrics` serves on /metrics (docs/operations.md#monitoring): the Dagster
side of the service, computed at each scrape from the request, delivery and refusal tables and from
the Dagster instance (runs, daemon heartbeats). Nothing is counted in this process, so a restart of
the exporter resets nothing and several exporters agree.

A scrape runs a handful of aggregate queries; their result is kept `min_interval_seconds` so that
several Prometheus servers scraping at once cost the database one computation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from export_pipelines.core.delivery.delivery_store import DeliveryStore
from export_pipelines.core.formats import format_names
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.core.requests.refusals import RefusalStore
from export_pipelines.core.requests.request_reads import HistogramStats, RequestStats
from export_pipelines.core.requests.tenants import list_tenants
from export_pipelines.orchestration import tags

log = logging.getLogger("export_pipelines.metrics")

# Bucket bounds: an export runs from about a second (a few rows) to an hour (10M rows), writes
# from kilobytes to gigabytes, and waits from under a second (the submitter) to minutes (a full queue).
DURATION_BOUNDS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
BYTES_BOUNDS = (1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10)
WAIT_BOUNDS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
# A run's outcome as the metrics name it, per Dagster run status. `started` counts every run that
# got past its launch (whatever happened next).
RUN_OUTCOMES = {
    "succeeded": ("SUCCESS",),
    "failed": ("FAILURE",),
    "canceled": ("CANCELED",),
    "started": ("STARTED", "SUCCESS", "FAILURE", "CANCELING", "CANCELED"),
}
RUN_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING", "SUCCESS", "FAILURE", "CANCELED")
DEFAULT_MIN_INTERVAL_SECONDS = 5.0
ENTERPRISE_REFRESH_SECONDS = 60.0


def tenant_class(enterprise: bool) -> str:
    return "enterprise" if enterprise else "standard"


def histogram(
    name: str, documentation: str, per_format: dict[str, HistogramStats], bounds: Sequence[float]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["format"])
    empty = HistogramStats(tuple((float(b), 0) for b in bounds), 0, 0.0)
    # Every format, with zeros until its first observation, so a dashboard's series exist at once.
    for fmt in [*format_names(), *sorted(set(per_format) - set(format_names()))]:
        h = per_format.get(fmt, empty)
        buckets = [(_le(b), float(n)) for b, n in h.buckets] + [("+Inf", float(h.count))]
        family.add_metric([fmt], buckets, h.total)
    return family


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


class ServiceCollector(Collector):
    """The metric families of the service's tables and of the Dagster instance. `instance` is a
    DagsterInstance, or None (the tables' metrics only)."""

    def __init__(
        self,
        conninfo: str,
        catalog: Catalog,
        instance: Any | None = None,
        *,
        min_interval_seconds: float = DEFAULT_MIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conninfo = conninfo
        self.catalog = catalog
        self.instance = instance
        self.min_interval_seconds = min_interval_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None
        self._enterprise: tuple[float, list[str]] | None = None
        self._requests = RequestStats(conninfo)
        self._deliveries = DeliveryStore(conninfo)
        self._refusals = RefusalStore(conninfo)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self.clock()
            if self._cached is None or now - self._cached[0] >= self.min_interval_seconds:
                self._cached = (now, list(self.compute()))
            families = self._cached[1]
        yield from families

    def close(self) -> None:
        for store in (self._requests, self._deliveries, self._refusals):
            store.close()

    def enterprise_tenants(self) -> list[str]:
        """The enterprise tenants, read again once a minute (a tenant's plan rarely changes)."""
        now = self.clock()
        if self._enterprise is None or now - self._enterprise[0] >= ENTERPRISE_REFRESH_SECONDS:
            try:
                found = list_tenants(self.conninfo, self.catalog, enterprise_only=True)
            except psycopg.Error as exc:  # e.g. no tenants table yet: every tenant counts as standard
                log.warning("metrics: the enterprise tenants cannot be read (%s); all count as standard", exc)
                found = []
            self._enterprise = (now, found)
        return self._enterprise[1]

    def compute(self) -> Iterable[Metric]:
        """Every family; a source that cannot be read (database down, instance unreachable) is left
        out and `export_metrics_source_up` says which, instead of failing the whole scrape."""
        started = time.perf_counter()
        up = GaugeMetricFamily(
            "export_metrics_source_up",
            "1 when this scrape read the source (database tables, dagster instance), 0 when it failed.",
            labels=["source"],
        )
        sources: list[tuple[str, Callable[[], Iterable[Metric]]]] = [("database", self.table_metrics)]
        if self.instance is not None:
            sources.append(("dagster", self.run_metrics))
        for name, read in sources:
            try:
                families = list(read())
            except Exception:  # a scrape must answer; the log has the cause
                log.exception("metrics: reading the %s failed", name)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up
        took = GaugeMetricFamily(
            "export_metrics_collect_seconds", "How long computing these metrics took (database reads)."
        )
        took.add_metric([], time.perf_counter() - started)
        yield took

    def table_metrics(self) -> Iterable[Metric]:
        yield from self.request_metrics()
        yield from self.delivery_metrics()
        yield from self.refusal_metrics()

    def request_metrics(self) -> Iterable[Metric]:
        enterprise = self.enterprise_tenants()
        states = GaugeMetricFamily(
            "export_requests",
            "Export requests (rows of export_requests) by state and tenant class.",
            labels=["state", "tenant_class"],
        )
        counts = {(s.state, s.enterprise): s.requests for s in self._requests.states(enterprise)}
        for state in ("pending", "queued", "running", "succeeded", "failed", "canceled", "expired"):
            for e in (False, True):
                states.add_metric([state, tenant_class(e)], counts.get((state, e), 0))
        yield states
        depth = GaugeMetricFamily(
            "export_queue_depth",
            "Requests waiting for their run to start (pending or queued), by tenant class.",
            labels=["tenant_class"],
        )
        oldest = GaugeMetricFamily(
            "export_queue_oldest_wait_seconds",
            "How long the oldest waiting (pending or queued) request has waited; 0 when none waits.",
            labels=["tenant_class"],
        )
        for q in self._requests.queue(enterprise):
            depth.add_metric([tenant_class(q.enterprise)], q.depth)
            oldest.add_metric([tenant_class(q.enterprise)], q.oldest_wait_seconds)
        yield depth
        yield oldest
        yield histogram(
            "export_request_wait_seconds",
            "From a request's creation to the start of its export, per format.",
            self._requests.histogram("wait", WAIT_BOUNDS),
            WAIT_BOUNDS,
        )
        yield histogram(
            "export_duration_seconds",
            "How long succeeded exports ran (start to success), per format.",
            self._requests.histogram("duration", DURATION_BOUNDS),
            DURATION_BOUNDS,
        )
        yield histogram(
            "export_size_bytes",
            "Bytes succeeded exports wrote (all files), per format.",
            self._requests.histogram("bytes", BYTES_BOUNDS),
            BYTES_BOUNDS,
        )

    def delivery_metrics(self) -> Iterable[Metric]:
        stats = self._deliveries.stats()
        by_status = GaugeMetricFamily(
            "export_deliveries",
            "Notifications (webhook, email) by channel and status: pending, delivered, failed (given up).",
            labels=["channel", "status"],
        )
        attempts = CounterMetricFamily(
            "export_delivery_attempts",
            "Attempts to deliver a notification, by channel and event.",
            labels=["channel", "event"],
        )
        failures = CounterMetricFamily(
            "export_delivery_failures",
            "Delivery attempts that did not deliver (retried later or given up), by channel and event.",
            labels=["channel", "event"],
        )
        statuses: dict[tuple[str, str], int] = {
            (c, s): 0 for c in ("webhook", "email") for s in ("pending", "delivered", "failed")
        }
        tried: dict[tuple[str, str], list[int]] = {}
        for s in stats:
            statuses[(s.channel, s.status)] = statuses.get((s.channel, s.status), 0) + s.deliveries
            total = tried.setdefault((s.channel, s.event), [0, 0])
            total[0] += s.attempts
            total[1] += s.failed_attempts
        for (channel, status), n in sorted(statuses.items()):
            by_status.add_metric([channel, status], n)
        for (channel, event), (made, failed) in sorted(tried.items()):
            attempts.add_metric([channel, event], made)
            failures.add_metric([channel, event], failed)
        yield by_status
        yield attempts
        yield failures

    def refusal_metrics(self) -> Iterable[Metric]:
        refused = CounterMetricFamily(
            "export_refusals",
            "Requests a cap refused: tenant_active_cap (too many active exports, at insert through "
            "the API or the command line), pdf_rows (a pdf over its row cap, when counted).",
            labels=["reason"],
        )
        for reason, n in sorted(self._refusals.counts().items()):
            refused.add_metric([reason], n)
        yield refused

    def run_metrics(self) -> Iterable[Metric]:
        from dagster import DagsterRunStatus, RunsFilter

        instance = self.instance
        assert instance is not None
        runs = GaugeMetricFamily(
            "export_dagster_runs", "Dagster runs of every job by status.", labels=["status"]
        )
        for status in RUN_STATUSES:
            n = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus(status)]))
            runs.add_metric([status], n)
        yield runs
        exports = CounterMetricFamily(
            "export_runs",
            "Export runs (every door: requests, launchpad, monthly, retries) by format and outcome: "
            "started, succeeded, failed, canceled.",
            labels=["format", "outcome"],
        )
        for fmt in format_names():
            for outcome, statuses in RUN_OUTCOMES.items():
                n = instance.get_runs_count(
                    RunsFilter(statuses=[DagsterRunStatus(s) for s in statuses], tags={tags.FORMAT: fmt})
                )
                exports.add_metric([fmt, outcome], n)
        yield exports
        queued = instance.get_run_records(
            filters=RunsFilter(statuses=[DagsterRunStatus.QUEUED]),
            limit=1,
            order_by="create_timestamp",
            ascending=True,
        )
        oldest = GaugeMetricFamily(
            "export_run_queue_oldest_wait_seconds",
            "How long the oldest run in Dagster's run queue has waited; 0 when the queue is empty.",
        )
        waited = time.time() - queued[0].create_timestamp.timestamp() if queued else 0.0
        oldest.add_metric([], max(0.0, waited))
        yield oldest
        beats = GaugeMetricFamily(
            "export_dagster_daemon_heartbeat_age_seconds",
            "Seconds since each Dagster daemon's last heartbeat (sensors, run queue, monitoring...).",
            labels=["daemon"],
        )
        for daemon, beat in sorted(instance.get_daemon_heartbeats().items()):
            beats.add_metric([daemon], max(0.0, time.time() - beat.timestamp))
        yield beats
