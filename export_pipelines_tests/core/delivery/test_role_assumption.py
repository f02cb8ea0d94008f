"""An s3 destination with `role_arn` + `external_id`: the service assumes the tenant's role through
STS, sending the external id. Tested against a stand-in STS (a local HTTP server answering
AssumeRole as AWS does), not AWS itself: what it checks is what the client sends and how it reads
the answer and a refusal."""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Iterator

import boto3
import pytest

from export_pipelines.core.delivery.destinations.s3 import assume_role
from export_pipelines.core.errors import DestinationDenied

ROLE = "arn:aws:iam::123456789012:role/vendor-exports"
EXTERNAL_ID = "acme-7f3a"

ANSWER = """<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIATEMPORARY</AccessKeyId>
      <SecretAccessKey>temporary-secret</SecretAccessKey>
      <SessionToken>temporary-token</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <AssumedRoleUser><AssumedRoleId>AROA:x</AssumedRoleId><Arn>{role}/x</Arn></AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</AssumeRoleResponse>"""
DENIED = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code><Message>not authorized</Message></Error>
  <RequestId>2</RequestId>
</ErrorResponse>"""


@pytest.fixture
def sts() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            seen.append(form)
            # The role's trust policy: only with the tenant's external id.
            ok = form.get("Action") == "AssumeRole" and form.get("ExternalId") == EXTERNAL_ID
            body = (ANSWER.format(role=ROLE) if ok else DENIED).encode()
            self.send_response(200 if ok else 403)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _client(url: str):
    return boto3.session.Session().client(
        "sts",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="service",
        aws_secret_access_key="s",
    )


def test_assumes_the_role_with_the_external_id(sts):
    url, seen = sts
    keys = assume_role(ROLE, EXTERNAL_ID, None, sts_client=_client(url))
    assert keys == {
        "aws_access_key_id": "ASIATEMPORARY",
        "aws_secret_access_key": "temporary-secret",
        "aws_session_token": "temporary-token",
    }
    assert seen[0]["RoleArn"] == ROLE and seen[0]["ExternalId"] == EXTERNAL_ID
    assert seen[0]["RoleSessionName"].startswith("export-pipelines-")


def test_a_refused_role_is_denied_naming_the_field(sts):
    url, _ = sts
    with pytest.raises(DestinationDenied) as refused:
        assume_role(ROLE, "someone-elses-id", None, sts_client=_client(url))
    assert refused.value.code == "destination_denied" and refused.value.field == "config.role_arn"
