"""The data team's monthly path on the command line. `failed-partitions` refuses bad input; `backfill
--failed` launches nothing when nothing failed; `backfill --month` makes ONE Dagster backfill of
exactly the month's enterprise (or listed) tenants' partitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus

from export_pipelines.cli.main import main
from export_pipelines_tests.support.services import ENTERPRISE


@pytest.mark.parametrize(
    ("args", "flag", "allowed"),
    [
        (["--month", "nonsense"], "--month", "YYYY-MM"),
        (["--month", "2026-13"], "--month", "YYYY-MM"),
        (["--job", "nonsense_job"], "--job", "monthly_tenant_export_job"),
    ],
)
def test_failed_partitions_refuses_bad_input(args, flag, allowed, capsys):
    assert main(["failed-partitions", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert flag in err and allowed in err and args[1] in err


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch, source_url, bucket) -> Iterator[dg.DagsterInstance]:
    """A throw-away instance (sqlite, the stock queue: nothing runs without a daemon)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("EXPORT_MONTHS_FROM", "2024-01-01")
    with dg.DagsterInstance.get() as instance:
        yield instance


def test_backfill_failed_launches_nothing_when_nothing_failed(dagster_home, capsys):
    assert main(["backfill", "--failed", "--month", "2024-05"]) == 0
    out, _ = capsys.readouterr()
    assert "nothing failed" in out
    assert dagster_home.get_backfills() == [] and dagster_home.get_runs() == []


def test_backfill_refuses_bad_input(dagster_home, capsys):
    assert main(["backfill", "--month", "2026-13"]) == 2
    assert main(["backfill", "--month", "2024-05", "--job", "nonsense_job"]) == 2
    assert main(["backfill", "--month", "2024-05", "--tenant", "no-such-tenant"]) == 2
    assert main(["backfill", "--month", "2023-12"]) == 2  # before EXPORT_MONTHS_FROM
    err = capsys.readouterr().err
    assert "--month" in err and "--job" in err and "--tenant: " in err and "no-such-tenant" in err
    assert dagster_home.get_backfills() == [] and dagster_home.get_runs() == []


def test_backfill_of_a_month_is_one_backfill_of_exactly_those_partitions(dagster_home, capsys):
    assert main(["backfill", "--month", "2024-05"]) == 0
    (backfill,) = dagster_home.get_backfills()
    assert sorted(backfill.partition_names) == [f"2024-05-01|{t}" for t in ENTERPRISE]
    # Requested for the daemon, which cuts it into runs of several partitions (BackfillPolicy):
    # no run yet (test_monthly_daemon.py runs one through a daemon).
    assert backfill.status == BulkActionStatus.REQUESTED and backfill.partition_set_name
    assert dagster_home.get_runs() == []
    # The list form: only those tenants.
    assert main(["backfill", "--month", "2024-06", "--tenant", "t-003", "--tenant", "t-big"]) == 0
    newest = dagster_home.get_backfills()[0]
    assert sorted(newest.partition_names) == ["2024-06-01|t-003", "2024-06-01|t-big"]


def test_the_current_and_future_months_are_refused(dagster_home, capsys):
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    current = now.strftime("%Y-%m")
    future = f"{now.year + 1}-01"
    for month in (current, future):
        assert main(["backfill", "--month", month, "--tenant", "t-003"]) == 2
        err = capsys.readouterr().err
        assert f"--month: month {month} has not ended" in err and "a finished month" in err, err
    assert dagster_home.get_backfills() == [] and dagster_home.get_runs() == []


def test_dry_run_and_nothing_to_do_say_so(dagster_home, capsys):
    assert main(["backfill", "--month", "2024-05", "--tenant", "t-003", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run, nothing launched; a backfill would cover 1 partition(s)"), out
    assert "2024-05-01|t-003" in out
    assert dagster_home.get_backfills() == []
    assert main(["failed-partitions", "--month", "2024-05"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no failed partitions of monthly_tenant_export_job in 2024-05" in err


def test_backfill_without_the_tenants_table_says_which_table(source_url, monkeypatch, capsys):
    import psycopg

    from export_pipelines_tests.support.services import with_db

    admin = with_db(source_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS exports_no_tenants")
        conn.execute("CREATE DATABASE exports_no_tenants")
    try:
        monkeypatch.setenv("SOURCE_DATABASE_URL", with_db(source_url, "exports_no_tenants"))
        assert main(["backfill", "--month", "2025-11", "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert "tenants table public.tenants does not exist" in err and "Traceback" not in err
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS exports_no_tenants WITH (FORCE)")
