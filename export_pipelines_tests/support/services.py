"""What the tests share besides fixtures: the test database, bucket and size of the demo data, the
webhook secret, the demo data's enterprise tenants, and the code location's definitions by name."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from export_pipelines.settings import Settings
from export_pipelines_dev.demo_data import DemoSize

# Each concurrent test session (e.g. parallel checkouts) can use its own database.
TEST_DB = os.environ.get("EXPORT_TEST_DB", "exports_test")
TEST_BUCKET = "exports-test"
WEBHOOK_SECRET = "test-webhook-secret"
# Big enough for the "at least 100,000 nasty rows" requirement, small enough for CI.
TEST_SIZE = DemoSize(big_rows=120_000, small_rows=30_000, small_tenants=20)
ENTERPRISE = ["t-005", "t-010", "t-015", "t-020", "t-big"]  # plan = 'enterprise' in the demo data


def with_db(url: str, db: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + db


def code_location(settings: Settings | None = None) -> dict[str, Any]:
    """The code location's jobs, sensors and schedules by name, built from `settings` (default:
    nothing set), without the resources: tests pass their own."""
    from export_pipelines.orchestration.jobs import build_export_job, janitor_job, janitor_schedule
    from export_pipelines.orchestration.monthly.monthly_asset import build_monthly_job
    from export_pipelines.orchestration.monthly.schedules import build_monthly_schedule
    from export_pipelines.orchestration.sensors import build_sensors

    settings = settings or Settings()
    _, monthly_job = build_monthly_job(settings)
    _, export_job = build_export_job(settings)
    defs = [
        export_job,
        monthly_job,
        janitor_job,
        build_monthly_schedule(monthly_job, settings.monthly_batch_size),
        janitor_schedule,
    ]
    return {d.name: d for d in [*defs, *build_sensors(settings, export_job, monthly_job)]}


def run_export_job(*, resources: Mapping[str, Any], settings: Settings | None = None, **kwargs: Any) -> Any:
    """tenant_export_job executed in process with these resources (the job of the exports asset,
    resolved as the code location resolves it): `execute_in_process`'s other arguments as keywords."""
    from export_pipelines.orchestration.jobs import export_job_with

    return export_job_with(resources, settings).execute_in_process(**kwargs)
