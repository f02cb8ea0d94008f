"""Settings read from the environment in one place; the one run-config builder."""

from __future__ import annotations

import pytest

from export_pipelines.core.errors import ConfigurationError
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines.settings import Settings


def test_nothing_set_gives_the_documented_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.prefix, settings.aws_region, settings.sensor_interval_seconds) == (
        "exports",
        "us-east-1",
        5,
    )
    assert (settings.months_from, settings.monthly_resource, settings.monthly_format) == (
        "2024-01-01",
        "orders",
        "csv",
    )
    assert settings.statement_timeout_seconds is None and settings.webhook_allowlist == ()


def test_every_variable_is_read():
    settings = Settings.from_env(
        {
            "SOURCE_DATABASE_URL": "postgresql://db/x",
            "AWS_ENDPOINT_URL": "http://s3",
            "AWS_REGION": "eu-west-1",
            "AWS_ACCESS_KEY_ID": "id",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_SESSION_TOKEN": "token",
            "EXPORT_BUCKET": "b",
            "EXPORT_PREFIX": "p",
            "EXPORT_CATALOG": "/c.yaml",
            "EXPORT_WEBHOOK_SECRET": "w",
            "EXPORT_WEBHOOK_ALLOWLIST": " Hooks.Example.com, .example.org ,",
            "SMTP_URL": "smtp://mail:25",
            "EXPORT_STATEMENT_TIMEOUT": "5min",
            "EXPORT_SENSOR_INTERVAL_SECONDS": "2",
            "EXPORT_MONTHS_FROM": "2025-01-01",
            "EXPORT_MONTHLY_RESOURCE": "invoices",
            "EXPORT_MONTHLY_FORMAT": "xlsx",
        }
    )
    assert settings == Settings(
        source_database_url="postgresql://db/x",
        aws_endpoint_url="http://s3",
        aws_region="eu-west-1",
        aws_access_key_id="id",
        aws_secret_access_key="secret",
        aws_session_token="token",
        bucket="b",
        prefix="p",
        catalog_path="/c.yaml",
        webhook_secret="w",
        webhook_allowlist=("hooks.example.com", ".example.org"),
        smtp_url="smtp://mail:25",
        statement_timeout_seconds=300.0,
        sensor_interval_seconds=2,
        months_from="2025-01-01",
        monthly_resource="invoices",
        monthly_format="xlsx",
    )


@pytest.mark.parametrize(
    ("text", "seconds"), [("300s", 300.0), ("200ms", 0.2), ("1500", 1.5), ("1 h", 3600.0), ("", None)]
)
def test_statement_timeout_takes_postgresql_units(text, seconds):
    assert Settings.from_env({"EXPORT_STATEMENT_TIMEOUT": text}).statement_timeout_seconds == seconds


@pytest.mark.parametrize(
    ("name", "value"), [("EXPORT_STATEMENT_TIMEOUT", "soon"), ("EXPORT_SENSOR_INTERVAL_SECONDS", "5s")]
)
def test_a_bad_value_names_the_variable(name, value):
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_run_config_writes_only_what_is_given():
    assert export_run_config(tenant_id="t-1", resource="orders") == {
        "ops": {"count_rows": {"config": {"tenant_id": "t-1", "resource": "orders"}}}
    }
    config = export_run_config(
        tenant_id="t-1", resource="orders", format="csv", filters={}, request_id="r", email="a@example.com"
    )["ops"]["count_rows"]["config"]
    assert config == {
        "tenant_id": "t-1",
        "resource": "orders",
        "format": "csv",
        "filters": {},
        "request_id": "r",
        "notify": {"webhook_url": None, "email": "a@example.com"},
    }
