"""Progress moves by rows, not only per uploaded 8 MiB part: a PDF of a few thousand rows (one part) is
requested through the real API, run by the real daemon, and while it runs the API's status shows rows
between 0 and the total, and the run's page (its event log) has progress lines before the part is
uploaded. Sizes on the run page read in the unit that fits."""

from __future__ import annotations

import re
import time
from pathlib import Path

import dagster as dg
import httpx

from export_pipelines.settings import Settings
from export_pipelines_tests.support.api_helpers import auth, key_for, migrate_api, serve
from export_pipelines_tests.support.daemon import ROOT, running_daemon

TENANT = "t-001"  # a few thousand orders: one PDF, one part


def test_progress_moves_by_rows_during_a_one_part_export(
    stack_env, source_url, bucket, pg, tmp_path: Path, monkeypatch
):
    total = pg.execute("SELECT count(*) FROM orders WHERE tenant_id = %s", [TENANT]).fetchone()[0]
    assert 2_000 < total <= 10_000
    migrate_api(source_url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    with (
        running_daemon(
            stack_env, source_url, bucket, home, "dagster_row_progress", PYTHONPATH=str(ROOT)
        ) as env,
        serve(Settings.from_env(env)) as api,
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", env["DAGSTER_POSTGRES_URL"])
        token = key_for(source_url, TENANT)
        created = client.post(
            "/v1/exports", json={"resource": "orders", "format": "pdf"}, headers=auth(token)
        )
        assert created.status_code == 202, created.text
        export_id = created.json()["id"]
        seen: list[tuple[str, int, int | None]] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            doc = client.get(f"/v1/exports/{export_id}", headers=auth(token)).json()
            seen.append((doc["status"], doc["rows_exported"], doc["percent"]))
            if doc["status"] in ("succeeded", "failed", "canceled"):
                break
            time.sleep(0.2)
        assert seen[-1][0] == "succeeded", seen[-1]
        assert seen[-1][1] == total and seen[-1][2] == 100
        between = sorted({rows for status, rows, _ in seen if status == "running" and 0 < rows < total})
        assert between, f"the API never showed rows between 0 and {total}: {seen}"
        percents = {p for status, rows, p in seen if status == "running" and 0 < rows < total}
        assert all(p is not None and 0 < p < 100 for p in percents), percents

        run_id = pg.execute("SELECT run_id FROM export_requests WHERE id = %s", [export_id]).fetchone()[0]
        with dg.DagsterInstance.from_config(str(home)) as instance:
            lines = [
                e.user_message for e in instance.all_logs(run_id) if e.user_message.startswith("progress:")
            ]
    # On the run's page: lines with rows counted before the one part was uploaded.
    early = [line for line in lines if "0 part(s) uploaded so far" in line]
    assert early, lines
    rows = [int(re.match(r"progress: (\d+)/", line).group(1)) for line in early]
    assert any(0 < r < total for r in rows), lines
    assert lines[-1].startswith(f"progress: {total}/{total} rows (100.0%)"), lines[-1]
    assert re.search(r" \d+(\.\d)? (KB|MB) uploaded, ", lines[-1]), lines[-1]
