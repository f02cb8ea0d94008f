"""Property-based: schemathesis generates requests from /openapi.json against the running service;
no answer may be a 5xx, an undocumented status code, or a body or header that breaks the schema."""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve

MAX_EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def running_api(stack_env, source_url, s3_client, bucket):
    migrate_api(source_url)
    with serve(api_settings(stack_env, source_url, bucket, f"schema-{uuid.uuid4().hex[:8]}")) as api:
        yield api


@pytest.fixture(scope="module")
def token(source_url, running_api):
    return key_for(source_url, f"schema-{uuid.uuid4().hex[:8]}")


def test_openapi_conformance(running_api, token):
    # Driven from here rather than by schemathesis' pytest plugin (which pytest 9 breaks): one
    # hypothesis run per operation, MAX_EXAMPLES cases each.
    schema = schemathesis.openapi.from_url(f"{running_api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            response = case.call_and_validate(
                base_url=running_api.url, headers=auth(token), checks=CHECKS, timeout=10
            )
            statuses.append(response.status_code)

        check()
    # The run reached the handlers, not only the validation layer.
    assert len(statuses) >= 5 * len(operations)
    assert {200, 202, 404, 422} <= set(statuses), sorted(set(statuses))
