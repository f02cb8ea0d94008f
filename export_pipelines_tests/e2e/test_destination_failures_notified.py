"""An export into a tenant's destination that the destination refuses, end to end: the run fails
with the destination's code, the failure sensor's step fails the row and queues the notice, one tick
of the delivery sensor posts `export.failed` to the tenant's webhook receiver (a real HTTP server on
loopback, EXPORT_WEBHOOK_ALLOW_PRIVATE's setting), carrying the code and a message naming what to
fix. No credential appears in the webhook body, the request row, the run's events or the logs;
nothing is left half-written in the destination.

GCS with wrong credentials: fake-gcs-server accepts any caller and never answers 401 or 403 (it does
not validate credentials), so those cases go through support/gcs_auth_proxy.py, a stand-in for
Google's two checks in front of the real fake-gcs-server: the token endpoint verifies the service
account key's signed grant against the key registered for the account (`400 invalid_grant` for a
deleted key or another account's), and the storage API answers `403` to an account without write
permission. The storage calls that pass reach fake-gcs-server itself."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from export_pipelines.core.delivery.destinations.destination_store import DestinationStore
from export_pipelines.core.delivery.destinations.secrets import SecretBox
from export_pipelines.core.delivery.drain import DeliveryPolicy
from export_pipelines.core.delivery.webhook_client import verify
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.orchestration import tags
from export_pipelines.orchestration.delivery_sensor import build_delivery_sensor
from export_pipelines.orchestration.request_intake import request_run_config
from export_pipelines.orchestration.resources import ExportSettings, Notifier
from export_pipelines.orchestration.sensors import record_run_failure, tenant_facing_failure
from export_pipelines.settings import Settings
from export_pipelines_tests.support.api_helpers import api_settings, auth, key_for, migrate_api, serve
from export_pipelines_tests.support.destinations import (
    TENANT_S3_CREDENTIALS,
    gcs_bucket,
    read_folder,
    s3_config,
    sftp_config,
    sftp_credentials,
    tenant_bucket,
)
from export_pipelines_tests.support.gcs_auth_proxy import GcsAuthProxy, gcs_auth_proxy, new_key
from export_pipelines_tests.support.services import WEBHOOK_SECRET, run_export_job

TENANT = "t-014"
BUCKET = "tenant-gcs-auth"
WRITER, READER = "exports@tenant.iam.gserviceaccount.com", "reader@tenant.iam.gserviceaccount.com"
NO_WAIT = DeliveryPolicy(base_delay_seconds=0.0, max_attempts=2)
WRONG_SECRET = "wrong-secret-7f3a9c"


@dataclasses.dataclass
class Gcs:
    proxy: GcsAuthProxy
    upstream: str
    keys: dict[str, str]  # label -> service_account_json

    def config(self, prefix: str) -> dict[str, Any]:
        return {"bucket": BUCKET, "prefix": prefix, "endpoint_url": self.proxy.url}


@pytest.fixture(scope="module")
def gcs(fake_gcs) -> Iterator[Gcs]:
    """fake-gcs-server behind the credential stand-in: a writer account, a read-only account, and a
    key Google does not know for the writer (deleted, or another account's)."""
    gcs_bucket(fake_gcs, BUCKET)
    with gcs_auth_proxy(fake_gcs.url) as proxy:
        writer, writer_public = new_key()
        reader, reader_public = new_key()
        unknown, _ = new_key()
        proxy.register(WRITER, writer_public)
        proxy.register(READER, reader_public, access="read")
        yield Gcs(
            proxy,
            fake_gcs.url,
            {
                "good": proxy.key_file(WRITER, writer),
                "wrong_key": proxy.key_file(WRITER, unknown),
                "read_only": proxy.key_file(READER, reader),
            },
        )


def private_key_line(key_file: str) -> str:
    """A line from the middle of the key's PEM: what a leak of the key would show."""
    return json.loads(key_file)["private_key"].splitlines()[5]


@pytest.fixture(scope="module")
def api(stack_env, source_url, bucket):
    migrate_api(source_url)
    settings = dataclasses.replace(
        api_settings(stack_env, source_url, bucket, "dest-failures"), destinations_allow_private=True
    )
    with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
def headers(source_url):
    return auth(key_for(source_url, TENANT))


def gcs_body(gcs: Gcs, label: str, prefix: str) -> dict[str, Any]:
    return {
        "kind": "gcs",
        "name": f"gcs-{label}-{uuid.uuid4().hex[:6]}",
        "config": gcs.config(prefix),
        "credentials": {"service_account_json": gcs.keys[label]},
    }


@pytest.mark.parametrize(
    ("label", "result"), [("good", "ok"), ("wrong_key", "denied"), ("read_only", "denied")]
)
def test_gcs_test_answers_denied_for_wrong_credentials(api, headers, gcs, prefix, label, result):
    made = httpx.post(
        f"{api.url}/v1/destinations", json=gcs_body(gcs, label, prefix), headers=headers, timeout=60
    )
    assert made.status_code == 201, made.text
    tested = httpx.post(f"{api.url}/v1/destinations/{made.json()['id']}/test", headers=headers, timeout=120)
    assert tested.status_code == 200 and tested.json()["result"] == result, tested.text
    assert private_key_line(gcs.keys[label]) not in tested.text + made.text
    if result == "denied":
        assert tested.json()["message"].startswith("credentials:")  # what to fix
    # Nothing stays behind: the probe of the read-only account was refused before it was written.
    assert not read_folder("gcs", {}, {"bucket": BUCKET, "endpoint_url": gcs.upstream}, prefix + "/", {})


def test_a_key_files_token_uri_passes_the_host_rules(api, headers, gcs, prefix):
    """The client posts the signed grant to the key file's token_uri: a metadata address is refused
    when the destination is created, as an endpoint_url would be."""
    key = json.loads(gcs.keys["good"])
    body = gcs_body(gcs, "good", prefix)
    body["credentials"] = {
        "service_account_json": json.dumps({**key, "token_uri": "http://169.254.169.254/t"})
    }
    answer = httpx.post(f"{api.url}/v1/destinations", json=body, headers=headers, timeout=30)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "credentials", answer.text
    assert private_key_line(gcs.keys["good"]) not in answer.text


class Receiver:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec.calls.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield rec, f"http://127.0.0.1:{server.server_port}/hooks/exports"
    server.shutdown()
    server.server_close()


# (case, expected code, the field the message names)
CASES = [
    ("gcs-wrong-key", "destination_denied", "credentials"),
    ("gcs-read-only", "destination_denied", "credentials"),
    ("s3-wrong-secret", "destination_denied", "credentials"),
    ("s3-missing-bucket", "destination_not_found", "config.bucket"),
    ("sftp-unreachable", "destination_unreachable", "config.host"),
]


def failing_destination(
    case: str, request, stack_env, s3_client, prefix: str
) -> tuple[str, dict, dict, list]:
    """(kind, config, credentials, secrets that must never show) of the case's destination."""
    if case.startswith("gcs"):
        gcs = request.getfixturevalue("gcs")
        key = gcs.keys["wrong_key" if case == "gcs-wrong-key" else "read_only"]
        return "gcs", gcs.config(prefix), {"service_account_json": key}, [private_key_line(key)]
    if case.startswith("s3"):
        tenant_bucket(stack_env, s3_client)
        config = s3_config(stack_env, prefix)
        creds = dict(TENANT_S3_CREDENTIALS)
        if case == "s3-wrong-secret":
            creds["secret_access_key"] = WRONG_SECRET
        else:
            config["bucket"] = "tenant-no-such-bucket"
        return "s3", config, creds, [creds["secret_access_key"]]
    server = request.getfixturevalue("sftp_server")
    root = Path(server.root) / prefix
    root.mkdir(exist_ok=True)
    creds = sftp_credentials(server)
    return "sftp", sftp_config(server, path=str(root), port=9), creds, [creds["private_key"].splitlines()[3]]


def look_with_working_access(case: str, request, stack_env, config: dict, folder: str) -> dict[str, bytes]:
    if case.startswith("gcs"):
        upstream = request.getfixturevalue("gcs").upstream
        return read_folder("gcs", stack_env, {**config, "endpoint_url": upstream}, folder, {})
    if case == "s3-wrong-secret":
        return read_folder("s3", stack_env, config, folder, {})
    if case == "sftp-unreachable":
        return read_folder("sftp", stack_env, config, folder, {})
    return {}  # the bucket does not exist


@pytest.mark.parametrize(("case", "code", "field"), CASES, ids=[c for c, _, _ in CASES])
def test_a_refused_export_tells_the_tenant_and_leaks_no_credential(
    case, code, field, request, receiver, dagster_resources, stack_env, source_url, s3_client, prefix, caplog
):
    caplog.set_level(logging.DEBUG)
    rec, url = receiver
    kind, config, creds, secrets = failing_destination(case, request, stack_env, s3_client, prefix)
    notifier = Notifier(webhook_secret=WEBHOOK_SECRET, allow_private=True)
    resources = {
        **dagster_resources,
        "notifier": notifier,
        "export_settings": ExportSettings(
            bucket=dagster_resources["export_settings"].bucket,
            prefix=prefix,
            signing_key=stack_env["EXPORT_SIGNING_KEY"],
            secrets_key=stack_env["EXPORT_SECRETS_KEY"],
            destinations_allow_private=True,
        ),
    }
    with DestinationStore(source_url).migrate_once() as destinations:
        box = SecretBox(stack_env["EXPORT_SECRETS_KEY"])
        dest = destinations.create(box, TENANT, kind, f"{case}-{uuid.uuid4().hex[:6]}", config, creds)
    with RequestStore(source_url).migrate_once() as store:
        rid = store.create(tenant_id=TENANT, resource="orders", webhook_url=url, destination_id=dest.id)
        row = store.get(rid)
        instance = dg.DagsterInstance.ephemeral()
        result = run_export_job(
            run_config=request_run_config(row),
            resources=resources,
            raise_on_error=False,
            instance=instance,
            tags={tags.REQUEST_ID: row.id},  # as the request sensor tags the run it launches
        )
        assert not result.success
        # The failure sensor's step (export_failure_sensor): the tenant-facing code and message,
        # the row failed and the notice queued; then one tick of the delivery sensor sends it.
        failures = [e for e in result.all_events if e.is_step_failure]
        got_code, message = tenant_facing_failure(failures)
        step_errors = "; ".join(
            f"{e.step_key}: {e.step_failure_data.error.message.strip()}"
            for e in failures
            if e.step_failure_data and e.step_failure_data.error
        )
        run = instance.get_run_by_id(result.run_id)
        final = run.with_tags({**run.tags, "dagster/will_retry": "false"})
        record_run_failure(
            final, step_errors, resources["source"], notifier, None, code=got_code, tenant_error=message
        )
        sensor = build_delivery_sensor(Settings(), NO_WAIT)
        with dg.build_sensor_context(
            resources={"source": resources["source"], "notifier": notifier}
        ) as context:
            sensor(context)
        failed = store.get(row.id)
        stored_row = store.execute(
            "SELECT row_to_json(r)::text AS doc FROM export_requests r WHERE id = %s", [row.id]
        ).fetchone()["doc"]

    assert got_code == code
    ((hook_headers, body),) = rec.calls
    assert verify(
        WEBHOOK_SECRET, hook_headers["X-Export-Timestamp"], body, hook_headers["X-Export-Signature"]
    )
    payload = json.loads(body)
    assert payload["event"] == "export.failed" and payload["export_id"] == row.id
    assert payload["error_code"] == code
    assert f"({field}: " in payload["error"], payload["error"]  # names what to fix
    assert (failed.status, failed.error_code, failed.error) == ("failed", code, payload["error"])

    events = "\n".join(dg.serialize_value(e) for e in instance.all_logs(result.run_id))
    for secret in secrets:
        for where, text in (
            ("webhook", body.decode()),
            ("request row", stored_row),
            ("run events", events),
            ("logs", caplog.text),
        ):
            assert secret not in text, f"a credential in the {where}"
    folder = f"{prefix}/tenant={TENANT}/orders/{row.id}/"
    assert look_with_working_access(case, request, stack_env, config, folder) == {}  # nothing half-written
