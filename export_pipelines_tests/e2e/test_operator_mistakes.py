"""Operator mistakes stay with the operator, through a real dagster-daemon and dagster-webserver (the
UI's GraphQL API): the launchpad opens with the export block only (no `resources:`, which no run can
override) and required fields are required; a monthly run whose config names an unknown column fails
before any partition or tenant row is touched (no row changed, no notification); an ad-hoc run whose
request_id is a month (the monthly dump's folder) is refused without writing anything."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest

from export_pipelines.core.requests.request_row import monthly_request_id
from export_pipelines.orchestration import tags
from export_pipelines_tests.support.daemon import ROOT, running_daemon
from export_pipelines_tests.support.webserver import Webserver, running_webserver

MONTH = "2024-07"
SCHEMA = """
query ($selector: PipelineSelector!, $config: RunConfigData) {
  runConfigSchemaOrError(selector: $selector) {
    __typename
    ... on RunConfigSchema {
      rootDefaultYaml
      isRunConfigValid(runConfigData: $config) {
        __typename
        ... on RunConfigValidationInvalid { errors { message } }
      }
    }
  }
}"""
LAUNCH = """
mutation ($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""


@pytest.fixture(scope="module")
def dagster(
    stack_env, source_url, bucket, tmp_path_factory
) -> Iterator[tuple[Webserver, dg.DagsterInstance, str]]:
    home = tmp_path_factory.mktemp("operator_mistakes")
    with (
        running_daemon(
            stack_env, source_url, bucket, home, "dagster_operator_mistakes", PYTHONPATH=str(ROOT)
        ) as env,
        running_webserver(env, home) as web,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv("DAGSTER_POSTGRES_URL", env["DAGSTER_POSTGRES_URL"])
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield web, instance, env["EXPORT_PREFIX"]


def launch(web: Webserver, job: str, config: dict[str, Any], run_tags: dict[str, str] | None = None) -> str:
    params = {
        "selector": Webserver.selector(job),
        "runConfigData": config,
        "mode": "default",
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (run_tags or {}).items()]},
    }
    answer = web.graphql(LAUNCH, params=params)["launchPipelineExecution"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def finished(instance: dg.DagsterInstance, run_id: str, timeout: float = 240) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s")


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    assert events, "the run has no step failure"
    error = events[0].dagster_event.step_failure_data.error
    return error.message


def test_the_launchpad_opens_with_the_export_block_only(dagster):
    web, _, _ = dagster
    for job, op in (("monthly_tenant_export_job", "monthly_export"), ("tenant_export_job", "count_rows")):
        schema = web.graphql(SCHEMA, selector=Webserver.selector(job), config={})["runConfigSchemaOrError"]
        assert schema["__typename"] == "RunConfigSchema", schema
        opened = schema["rootDefaultYaml"]
        assert "resources" not in opened and "database" not in opened and "bucket" not in opened, opened
        assert f"ops:\n  {op}:\n    config:\n" in opened, opened
        assert "tenant_id: ''" not in opened
    # A required field is required in the launchpad's own check (before any run is launched).
    check = web.graphql(SCHEMA, selector=Webserver.selector("tenant_export_job"), config={})
    result = check["runConfigSchemaOrError"]["isRunConfigValid"]
    assert result["__typename"] == "RunConfigValidationInvalid", result
    assert any("tenant_id" in e["message"] for e in result["errors"]), result
    # Resources cannot be overridden per run: the schema has no `resources:` entry to set.
    resources = {"resources": {"export_settings": {"config": {"bucket": "elsewhere"}}}}
    over = web.graphql(SCHEMA, selector=Webserver.selector("monthly_tenant_export_job"), config=resources)
    assert over["runConfigSchemaOrError"]["isRunConfigValid"]["__typename"] == "RunConfigValidationInvalid"


def test_a_monthly_run_with_a_misspelt_column_touches_no_tenant(dagster, pg):
    web, instance, _ = dagster
    real = [r[0] for r in pg.execute("SELECT id FROM tenants ORDER BY id")]
    instance.add_dynamic_partitions("tenants", real)
    ordered = [t for t in instance.get_dynamic_partitions("tenants") if t in real]
    first, second = ordered[0], ordered[1]
    assert (
        instance.get_dynamic_partitions("tenants").index(second)
        == instance.get_dynamic_partitions("tenants").index(first) + 1
    )
    ids = [monthly_request_id(t, "orders", MONTH) for t in (first, second)]

    def tenant_side() -> list[Any]:
        rows = pg.execute(
            "SELECT id, status, error, updated_at FROM export_requests WHERE id = ANY(%s::uuid[]) ORDER BY id",
            [ids],
        ).fetchall()
        deliveries = pg.execute(
            "SELECT count(*) FROM export_deliveries WHERE request_id = ANY(%s::uuid[])", [ids]
        ).fetchone()
        return [rows, deliveries]

    before = tenant_side()
    run_id = launch(
        web,
        "monthly_tenant_export_job",
        {"ops": {"monthly_export": {"config": {"columns": ["id", "amount", "amout"]}}}},
        {tags.RANGE_START: f"{MONTH}-01|{first}", tags.RANGE_END: f"{MONTH}-01|{second}"},
    )
    run = finished(instance, run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    message = failure_message(instance, run_id)
    assert "nothing was exported" in message and "columns" in message and "amout" in message, message
    assert "allowed:" in message, message
    assert tenant_side() == before  # no tenant row made or changed, no notification recorded


def test_an_adhoc_run_may_not_take_a_monthly_dumps_export_id(dagster, pg, s3_client, bucket):
    web, instance, prefix = dagster
    config = {
        "ops": {
            "count_rows": {"config": {"tenant_id": "t-020", "resource": "orders", "request_id": "2024-05"}}
        }
    }
    run_id = launch(web, "tenant_export_job", config)
    run = finished(instance, run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    message = failure_message(instance, run_id)
    assert "request_id" in message and "monthly" in message and "backfill --month 2024-05" in message, message
    folder = f"{prefix}/tenant=t-020/orders/2024-05/"
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=folder).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket, Prefix=folder).get("Uploads", []) == []
    month_row = monthly_request_id("t-020", "orders", "2024-05")
    row = pg.execute("SELECT run_id FROM export_requests WHERE id = %s", [month_row]).fetchone()
    assert row is None or row[0] != run_id  # the tenant's monthly row is not this run's


def test_an_unfinished_month_is_refused_by_the_run():
    """The run refuses the current month itself (a launchpad run with a range of it)."""
    from datetime import UTC, datetime

    from export_pipelines.core.errors import InvalidRequest
    from export_pipelines.core.requests.catalog import load_catalog
    from export_pipelines.orchestration.monthly.monthly_asset import check_batch
    from export_pipelines.orchestration.monthly.monthly_export import MonthlyConfig

    now = datetime.now(UTC)
    current = now.strftime("%Y-%m-01")
    with pytest.raises(InvalidRequest) as refused:
        check_batch(load_catalog(None), MonthlyConfig(resource="orders"), [f"{current}|t-001"], now)
    assert f"month {current[:7]} has not ended" in str(refused.value)
    check_batch(load_catalog(None), MonthlyConfig(resource="orders"), ["2024-05-01|t-001"], now)


def test_the_exports_asset_is_described_in_code(dagster):
    """What the asset page of `exports/orders` (named at the top of every export's run page) shows:
    a definition with its description, not "doesn't have a software definition"."""
    web, _, _ = dagster
    nodes = web.graphql("{ assetNodes { assetKey { path } description groupName jobNames } }")["assetNodes"]
    exports = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert "exports/orders" in exports, sorted(exports)
    node = exports["exports/orders"]
    assert "download link" in node["description"] and "tenant_export_job" in node["description"]
    assert node["groupName"] == "exports"
