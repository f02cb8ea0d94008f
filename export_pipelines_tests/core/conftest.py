"""Fixtures of the core tests that use the `type_zoo` table."""

from __future__ import annotations

from typing import Any

import pytest

from export_pipelines.settings import Settings
from export_pipelines_tests.support import type_zoo
from export_pipelines_tests.support.zoo_expect import load_pg_rows


@pytest.fixture(scope="module")
def zoo(source_url):
    import psycopg

    with psycopg.connect(source_url, autocommit=True) as conn:
        type_zoo.load(conn)
    return type_zoo.catalog()


@pytest.fixture(scope="module")
def pg_rows(zoo, source_url) -> dict[str, list[dict[str, Any]]]:
    return load_pg_rows(source_url)


@pytest.fixture(scope="session")
def s3_client_settings(stack_env: dict[str, str]) -> dict[str, Any]:
    """make_s3_client's keyword arguments for the local stack (the core reads no environment)."""
    return Settings.from_env(stack_env).s3_client_options()
