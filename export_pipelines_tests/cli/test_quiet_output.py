"""Quiet by default: `export-pipelines demo` prints a short summary (rows, files, link) and names the
file that holds the run's event log; `backfill` prints what it launched. Neither prints Dagster's
DEBUG events, a BetaWarning, alembic's lines or a code server's INFO lines; `--verbose` shows the
run's events again. Each command runs as a user runs it: the installed `export-pipelines`, in a
fresh process, on a Dagster instance of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).parent / "export-pipelines"
NOISE = (" - DEBUG - ", "BetaWarning", "PreviewWarning", "alembic", "dagster.code_server")


@pytest.fixture
def env(tmp_path, source_url, bucket, prefix) -> dict[str, str]:
    """The test database and bucket, a fresh prefix, and a Dagster instance of its own in a scratch
    DAGSTER_HOME (SQLite storage, no daemon: the demo runs in process), configured as the
    project's dagster.yaml is in what concerns output (no telemetry banner)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SOURCE_DATABASE_URL": source_url,
        "EXPORT_BUCKET": bucket,
        "EXPORT_PREFIX": prefix,
    }


def run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(EXE), *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_demo_prints_a_summary_and_names_its_event_log(env):
    out = run(env, "demo", "--tenant", "t-003")
    assert [noise for noise in NOISE if noise in out] == [], out
    assert re.search(r"succeeded: \d+ rows, \d+ bytes in 1 file\(s\)", out), out
    assert "link (expires" in out and "http" in out
    log = Path(re.search(r"event log: (\S+)", out).group(1))
    events = log.read_text()
    assert log.parent == Path(env["DAGSTER_HOME"]) / "logs"
    # The whole event log is there, DEBUG events included.
    assert "DEBUG" in events and "STEP_START" in events and "RUN_SUCCESS" in events
    assert len(out.splitlines()) < 12, out


def test_demo_verbose_shows_the_runs_events(env):
    out = run(env, "demo", "--tenant", "t-003", "--verbose")
    assert " - DEBUG - " in out and "STEP_START" in out


def test_backfill_prints_what_it_launched_and_nothing_else(env):
    env = {**env, "EXPORT_DAGSTER_UI_URL": "http://dagster.example:3000/"}
    out = run(env, "backfill", "--month", "2024-05", "--tenant", "t-003")
    assert [noise for noise in NOISE if noise in out] == [], out
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert lines[0].startswith("backfill of 1 partition(s) of monthly_tenant_export_job: 2024-05-01|t-003")
    assert "requested" in lines[1]
    backfill_id = lines[1].split()[1]
    assert lines[2] == f"follow it in the Dagster UI: http://dagster.example:3000/runs/b/{backfill_id}"
    # No code server is started for it, even when --verbose would show its lines.
    verbose = run(env, "--verbose", "backfill", "--month", "2024-06", "--tenant", "t-003")
    assert "dagster.code_server" not in verbose and "requested" in verbose
