"""What the data team sees at the top of a run's page and on the exports asset's page, through a real
dagster-daemon and dagster-webserver: the run's tags (which the UI shows in the run's header) hold
how the export ended, its summary and the link to its files. The asset `exports/<resource>` has a
definition in code (the job's graph), not "External Asset", and the run materializes it.

The pages are also opened in Debian's chromium (playwright): screenshots go to /tmp/run_page_*.png.
Without chromium the browser checks skip, except on CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import dagster as dg
import httpx
import pytest

from export_pipelines.orchestration import tags
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines_tests.support.daemon import ROOT, running_daemon
from export_pipelines_tests.support.webserver import LOCATION, REPOSITORY, Webserver, running_webserver

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
TENANT = "t-005"
LAUNCH = """
mutation ($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN = """
query ($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { status tags { key value } } }
}"""
ASSET = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { isExecutable isMaterializable isObservable description groupName jobNames }
  }
  assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(limit: 1) { runId metadataEntries { label } } }
  }
}"""


@pytest.fixture(scope="module")
def dagster(
    stack_env, source_url, bucket, tmp_path_factory
) -> Iterator[tuple[Webserver, dg.DagsterInstance]]:
    home = tmp_path_factory.mktemp("run_page_header")
    with (
        running_daemon(stack_env, source_url, bucket, home, "dagster_run_page", PYTHONPATH=str(ROOT)) as env,
        running_webserver(env, home) as web,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv("DAGSTER_POSTGRES_URL", env["DAGSTER_POSTGRES_URL"])
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield web, instance


def launch(web: Webserver, config: dict[str, Any]) -> str:
    params = {"selector": Webserver.selector("tenant_export_job"), "runConfigData": config, "mode": "default"}
    answer = web.graphql(LAUNCH, params=params)["launchPipelineExecution"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def finished_tags(web: Webserver, run_id: str, timeout: float = 240) -> tuple[str, dict[str, str]]:
    """The run's status and tags as the UI reads them, once it has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = web.graphql(RUN, runId=run_id)["runOrError"]
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return run["status"], {t["key"]: t["value"] for t in run["tags"]}
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} not found (CI=true: run scripts/test_tools.sh)")
        pytest.skip(f"{CHROMIUM} not found: scripts/test_tools.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def opened(browser: Any, url: str) -> Any:
    """A page of the UI, past the "Join the Dagster community" dialog a fresh browser gets first."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url)
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=10_000)
        skip.click()
    except Exception:  # noqa: BLE001 - no dialog this time
        pass
    return page


def page_text(browser: Any, url: str, wait_for: str, screenshot: str) -> str:
    page = opened(browser, url)
    try:
        try:
            page.get_by_text(wait_for, exact=False).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # the rest of the page's queries
        finally:
            page.screenshot(path=screenshot)  # also of a page that never showed it
        return page.inner_text("body")
    finally:
        page.close()


def test_a_finished_export_shows_its_summary_and_link_at_the_top(dagster, pg, browser):
    web, _ = dagster
    run_id = launch(web, export_run_config(tenant_id=TENANT, resource="orders"))
    status, run_tags = finished_tags(web, run_id)
    assert status == "SUCCESS", run_tags
    rows = pg.execute("SELECT count(*) FROM orders WHERE tenant_id = %s", [TENANT]).fetchone()[0]
    assert run_tags[tags.OUTCOME] == "succeeded"
    assert run_tags[tags.RESULT].startswith(f"{rows:,} rows, ") and run_tags[tags.RESULT].endswith(
        " in 1 file(s)"
    ), run_tags
    assert " KB in " in run_tags[tags.RESULT] or " MB in " in run_tags[tags.RESULT], run_tags
    assert run_tags[tags.LINKS_EXPIRE].endswith(" UTC")
    # One file: the link is that file's, and it downloads it.
    link = run_tags[tags.DOWNLOAD]
    assert f"/tenant={TENANT}/orders/{run_id}/part-00001." in unquote(link), link
    got = httpx.get(link, timeout=30)
    assert got.status_code == 200 and got.content, got

    # The run's page: the asset it made at the top, its tags one click away (View tags and config).
    page = opened(browser, f"{web.url}/runs/{run_id}")
    try:
        page.get_by_text("View tags and config").first.click(timeout=60_000)
        page.get_by_text(tags.RESULT).first.wait_for(timeout=60_000)
        page.screenshot(path="/tmp/run_page_tags.png")
        text = page.inner_text("body")
    finally:
        page.close()
    assert run_tags[tags.RESULT] in text and "succeeded" in text, text[:3000]
    # The Runs list shows every run's own tags in its row.
    text = page_text(browser, f"{web.url}/runs", run_tags[tags.RESULT], "/tmp/run_page_runs_list.png")
    assert run_tags[tags.RESULT] in text, text[:3000]


def test_a_failed_export_says_why_in_its_tags(dagster):
    web, _ = dagster
    run_id = launch(web, export_run_config(tenant_id="no-such-tenant", resource="orders"))
    status, run_tags = finished_tags(web, run_id)
    assert status == "FAILURE"
    deadline = time.monotonic() + 60  # the failure sensor's next tick tags it
    while tags.OUTCOME not in run_tags and time.monotonic() < deadline:
        time.sleep(1)
        _, run_tags = finished_tags(web, run_id)
    assert run_tags[tags.OUTCOME].startswith("failed ("), run_tags
    assert run_tags[tags.ERROR] and tags.DOWNLOAD not in run_tags, run_tags


def test_the_exports_asset_is_defined_in_code_and_each_export_materializes_it(dagster, browser):
    web, _ = dagster
    run_id = launch(web, export_run_config(tenant_id=TENANT, resource="orders"))
    status, _ = finished_tags(web, run_id)
    assert status == "SUCCESS"
    answer = web.graphql(ASSET, key={"path": ["exports", "orders"]})
    node = answer["assetNodeOrError"]
    assert node["isExecutable"] and node["isMaterializable"] and not node["isObservable"], node
    assert "tenant_export_job" in node["jobNames"], node
    assert node["groupName"] == "exports" and "orders" in node["description"], node
    (latest,) = answer["assetOrError"]["assetMaterializations"]
    assert latest["runId"] == run_id, latest
    labels = [entry["label"] for entry in latest["metadataEntries"]]
    assert labels[:3] == ["summary", "download", "manifest"], labels
    url = f"{web.url}/locations/{REPOSITORY}@{LOCATION}/asset-groups/exports"
    assert httpx.get(url, timeout=30).status_code == 200
    text = page_text(browser, f"{web.url}/assets/exports/orders", "orders", "/tmp/run_page_asset.png")
    assert "External" not in text and "software definition" not in text, text[:3000]
    assert "Materialize" in text and TENANT in text, text[:3000]
