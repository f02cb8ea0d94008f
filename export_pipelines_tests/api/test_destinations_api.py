"""`/v1/destinations` on the real API server, PostgreSQL and a second SeaweedFS identity standing in
for a tenant's own S3: created with checks naming the field, credentials encrypted and never shown
(a fingerprint instead), tested with the matching code, deleted; `secrets rotate` re-encrypts."""

from __future__ import annotations

import dataclasses
import logging
import uuid

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet

from export_pipelines.cli.main import main
from export_pipelines.core.delivery.destinations.destination_store import DestinationStore
from export_pipelines.core.delivery.destinations.secrets import SecretBox
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve
from export_pipelines_tests.support.destinations import TENANT_S3_CREDENTIALS, s3_config, tenant_bucket

TENANT = "t-004"


@pytest.fixture(scope="module")
def api(stack_env, source_url, s3_client, bucket):
    migrate_api(source_url)
    tenant_bucket(stack_env, s3_client)
    settings = dataclasses.replace(
        api_settings(stack_env, source_url, bucket, "dest-api"), destinations_allow_private=True
    )
    with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
def headers(source_url):
    return auth(key_for(source_url, TENANT))


def create(api, headers, **body):
    return httpx.post(f"{api.url}/v1/destinations", json=body, headers=headers, timeout=60)


def s3_body(stack_env, **changes):
    body = {
        "kind": "s3",
        "name": f"lake-{uuid.uuid4().hex[:6]}",
        "config": s3_config(stack_env, "from-exports"),
        "credentials": dict(TENANT_S3_CREDENTIALS),
    }
    for key, value in changes.items():
        if key in ("config", "credentials"):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return body


def test_create_shows_a_fingerprint_never_the_secret(api, headers, stack_env, source_url, caplog):
    caplog.set_level(logging.DEBUG)
    secret = TENANT_S3_CREDENTIALS["secret_access_key"]
    answer = create(api, headers, **s3_body(stack_env))
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert secret not in answer.text
    assert made["credentials"] == {"fingerprint": "access_key_id=…dest, secret_access_key=set"}
    listed = httpx.get(f"{api.url}/v1/destinations", headers=headers, timeout=30)
    assert made["id"] in listed.text and secret not in listed.text
    with psycopg.connect(source_url) as conn:
        stored = conn.execute(
            "SELECT credentials FROM export_destinations WHERE id = %s", [made["id"]]
        ).fetchone()[0]
    assert secret.encode() not in bytes(stored)  # encrypted at rest
    tested = httpx.post(f"{api.url}/v1/destinations/{made['id']}/test", headers=headers, timeout=60)
    assert tested.json()["result"] == "ok", tested.text
    assert secret not in caplog.text


@pytest.mark.parametrize(
    ("changes", "result"),
    [
        ({"credentials": {"secret_access_key": "not-the-secret"}}, "denied"),
        ({"config": {"bucket": "tenant-no-such-bucket"}}, "not_found"),
        ({"config": {"endpoint_url": "http://127.0.0.1:9"}}, "unreachable"),
    ],
)
def test_a_failing_destination_answers_the_matching_code(api, headers, stack_env, changes, result):
    made = create(api, headers, **s3_body(stack_env, **changes))
    assert made.status_code == 201, made.text
    tested = httpx.post(f"{api.url}/v1/destinations/{made.json()['id']}/test", headers=headers, timeout=120)
    assert tested.status_code == 200
    assert tested.json()["result"] == result, tested.text
    assert "not-the-secret" not in tested.text


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"config": {"endpoint_url": "http://169.254.169.254/"}}, "config.endpoint_url"),
        ({"config": {"bucket": "Bad_Bucket"}}, "config.bucket"),
        ({"config": {"nope": "x"}}, "config.nope"),
        ({"credentials": {"secret_access_key": ""}}, "credentials"),
        ({"kind": "ftp"}, "kind"),
    ],
)
def test_bad_input_names_the_field(api, headers, stack_env, changes, field):
    answer = create(api, headers, **s3_body(stack_env, **changes))
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == field, answer.text


def test_private_hosts_are_refused_unless_the_deployment_allows_them(stack_env, source_url, bucket, headers):
    settings = api_settings(stack_env, source_url, bucket, "dest-api")  # the default: refused
    assert not settings.destinations_allow_private
    with serve(settings) as strict:
        answer = create(strict, headers, **s3_body(stack_env))
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "config.endpoint_url"


def test_deleted_destination_is_gone_and_its_credentials_wiped(api, headers, stack_env, source_url):
    made = create(api, headers, **s3_body(stack_env)).json()
    assert (
        httpx.delete(f"{api.url}/v1/destinations/{made['id']}", headers=headers, timeout=30).status_code
        == 204
    )
    assert (
        httpx.get(f"{api.url}/v1/destinations/{made['id']}", headers=headers, timeout=30).status_code == 404
    )
    assert (
        httpx.post(f"{api.url}/v1/destinations/{made['id']}/test", headers=headers, timeout=30).status_code
        == 404
    )
    with psycopg.connect(source_url) as conn:
        assert conn.execute(
            "SELECT credentials FROM export_destinations WHERE id = %s", [made["id"]]
        ).fetchone() == (None,)


def test_another_tenants_destination_does_not_exist_for_the_caller(api, headers, stack_env, source_url):
    made = create(api, headers, **s3_body(stack_env)).json()
    other = auth(key_for(source_url, "t-006"))
    assert httpx.get(f"{api.url}/v1/destinations/{made['id']}", headers=other, timeout=30).status_code == 404
    assert (
        httpx.post(f"{api.url}/v1/destinations/{made['id']}/test", headers=other, timeout=30).status_code
        == 404
    )
    assert made["id"] not in httpx.get(f"{api.url}/v1/destinations", headers=other, timeout=30).text


def test_secrets_rotate_reencrypts_with_the_newest_key(
    api, headers, stack_env, source_url, monkeypatch, capsys
):
    made = create(api, headers, **s3_body(stack_env)).json()
    old = stack_env["EXPORT_SECRETS_KEY"]
    new = Fernet.generate_key().decode()
    monkeypatch.setenv("SOURCE_DATABASE_URL", source_url)
    monkeypatch.setenv("EXPORT_SECRETS_KEY", f"{new},{old}")
    assert main(["secrets", "rotate"]) == 0
    assert "re-encrypted" in capsys.readouterr().out
    with DestinationStore(source_url) as store:
        found = store.for_writer(SecretBox(new), made["id"], TENANT)  # the new key alone decrypts it
        assert found.credentials == TENANT_S3_CREDENTIALS
        # Put the deployment's key back for the other tests' rows.
        store.rotate(SecretBox(f"{old},{new}"))


def test_an_export_request_names_a_destination_of_its_tenant(api, headers, stack_env, source_url):
    made = create(api, headers, **s3_body(stack_env)).json()
    body = {"resource": "orders", "destination_id": made["id"]}
    answer = httpx.post(f"{api.url}/v1/exports", json=body, headers=headers, timeout=30)
    assert answer.status_code == 202, answer.text
    with psycopg.connect(source_url) as conn:
        stored = conn.execute(
            "SELECT destination_id::text FROM export_requests WHERE id = %s", [answer.json()["id"]]
        ).fetchone()
    assert stored == (made["id"],)
    other = auth(key_for(source_url, "t-006"))
    refused = httpx.post(f"{api.url}/v1/exports", json=body, headers=other, timeout=30)
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "destination_id"
