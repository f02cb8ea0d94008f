"""Refusals are counted where they happen, in the database, for the metrics: a request over the
tenant's cap of active exports (any door through the request store) and a pdf over its row cap
(when count_rows counts it); other refusals are not cap refusals."""

from __future__ import annotations

import dagster as dg
import pytest

from export_pipelines.core.errors import TooManyActive
from export_pipelines.core.requests.refusals import PDF_ROWS, TENANT_ACTIVE_CAP, RefusalStore
from export_pipelines.core.storage.migrations.request_table import DEFAULT_TENANT_MAX_ACTIVE
from export_pipelines.orchestration.resources import ExportSettings
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines_tests.support.services import run_export_job


def refusals(source_url: str) -> dict[str, int]:
    with RefusalStore(source_url) as store:
        return store.counts()


def run(resources: dict, **config) -> dg.ExecuteInProcessResult:
    return run_export_job(
        run_config=export_run_config(**config),
        resources=resources,
        raise_on_error=False,
        instance=dg.DagsterInstance.ephemeral(),
    )


def test_a_pdf_over_its_row_cap_is_counted_and_other_refusals_are_not(
    dagster_resources, source_url, bucket, prefix
):
    resources = {
        **dagster_resources,
        "export_settings": ExportSettings(bucket=bucket, prefix=prefix, pdf_max_rows=5),
    }
    before = refusals(source_url)
    result = run(resources, tenant_id="t-005", resource="orders", format="pdf")
    assert not result.success
    assert "at most 5 rows" in result.get_step_failure_events()[0].step_failure_data.error.message
    assert refusals(source_url)[PDF_ROWS] == before[PDF_ROWS] + 1

    result = run(resources, tenant_id="t-005", resource="orders", format="pdf", columns=["id", "secret"])
    assert not result.success  # refused for its columns, not for its rows
    result = run(resources, tenant_id="t-005", resource="orders", format="csv", columns=["id", "secret"])
    assert not result.success
    assert refusals(source_url) == {**before, PDF_ROWS: before[PDF_ROWS] + 1}


def test_a_request_over_the_tenant_cap_is_counted(store, source_url):
    store.set_tenant_max_active(1)
    try:
        before = refusals(source_url)
        store.submit(tenant_id="t-007", resource="orders")
        with pytest.raises(TooManyActive):
            store.submit(tenant_id="t-007", resource="orders")
        assert refusals(source_url)[TENANT_ACTIVE_CAP] == before[TENANT_ACTIVE_CAP] + 1
    finally:
        store.set_tenant_max_active(DEFAULT_TENANT_MAX_ACTIVE)
