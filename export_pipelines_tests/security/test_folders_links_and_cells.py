"""The trust boundary of exports' folders and links: folders, links, keys and SQL-rendered cells.

Each test is named after the rule it pins down, and runs against the real PostgreSQL and S3
server of the dev stack. Rows are inserted the way an app (or an attacker with the app's access)
could before the app role existed: straight into export_requests.
"""

from __future__ import annotations

import csv
import email.message
import email.utils
import gzip
import io
import json
import os
import shutil
import traceback
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.session
import psycopg
import pytest
from botocore.credentials import Credentials, RefreshableCredentials

from export_pipelines.cli.main import main
from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.janitor import run_janitor
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.engine.query import connect
from export_pipelines.core.errors import ConfigurationError, Rejected
from export_pipelines.core.requests.catalog import parse_catalog
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.requests.request_store import RequestStore
from export_pipelines.core.storage.layout import ExportLocation, attachment, download_name
from export_pipelines.core.storage.s3 import delete_prefix, make_s3_client

# --- helpers -------------------------------------------------------------------------------------


def keys_under(client: Any, bucket: str, prefix: str) -> list[str]:
    return sorted(
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    )


def put_export(client: Any, bucket: str, location: ExportLocation, body: bytes = b"id\n1\n") -> str:
    """A complete one-file export in `location`'s folder, as finalize leaves it."""
    key = location.file_key(1, "csv")
    client.put_object(Bucket=bucket, Key=key, Body=body)
    manifest = {
        "export_id": location.export_id,
        "tenant_id": location.tenant_id,
        "resource": location.resource,
        "files": [{"key": key, "rows": 1, "bytes": len(body), "sha256": "x"}],
    }
    client.put_object(Bucket=bucket, Key=location.manifest_key, Body=json.dumps(manifest).encode())
    client.put_object(Bucket=bucket, Key=location.success_key, Body=b"")
    return key


def insert_row(
    pg: Any,
    *,
    tenant: str,
    status: str = "succeeded",
    expires_in: timedelta = timedelta(hours=5),
    manifest_key: str | None = None,
    request_id: str | None = None,
) -> str:
    rid = request_id or str(uuid.uuid4())
    pg.execute(
        "INSERT INTO export_requests (id, tenant_id, resource, status, manifest_key, download_url, "
        "expires_at) VALUES (%s, %s, 'orders', %s, %s, 'https://old.example/link', now() + %s)",
        [rid, tenant, status, manifest_key, expires_in],
    )
    return rid


def refreshable_client(stack_env: dict[str, str], expires_in: timedelta) -> Any:
    """A client of the local S3 server whose credentials are temporary: botocore's
    RefreshableCredentials (what an assumed role, IMDS or SSO give) expiring in `expires_in`."""
    expiry = (datetime.now(UTC) + expires_in).isoformat()
    metadata = {
        "access_key": stack_env["AWS_ACCESS_KEY_ID"],
        "secret_key": stack_env["AWS_SECRET_ACCESS_KEY"],
        "token": None,
        "expiry_time": expiry,
    }
    creds = RefreshableCredentials.create_from_metadata(
        metadata=metadata, refresh_using=lambda: dict(metadata), method="assume-role"
    )
    session = botocore.session.get_session()
    session._credentials = creds
    client = make_s3_client(endpoint_url=stack_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    # make_s3_client builds its own session; sign with the temporary credentials instead.
    temp = boto3.session.Session(botocore_session=session).client(
        "s3", endpoint_url=stack_env["AWS_ENDPOINT_URL"], region_name="us-east-1", config=client.meta.config
    )
    assert temp._get_credentials() is creds
    return temp


def url_expires_in(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])


# --- the janitor ----------------------------------------------------------------------


def test_janitor_never_deletes_outside_the_exports_folder(store, pg, s3_client, bucket, prefix):
    # Two tenants' live exports, and objects at the prefix root (what 'exports/' held).
    victim_a = ExportLocation(prefix, "t-002", "orders", str(uuid.uuid4()))
    victim_b = ExportLocation(prefix, "t-003", "orders", str(uuid.uuid4()))
    put_export(s3_client, bucket, victim_a)
    put_export(s3_client, bucket, victim_b)
    insert_row(pg, tenant="t-002", request_id=victim_a.export_id, manifest_key=victim_a.manifest_key)
    insert_row(pg, tenant="t-003", request_id=victim_b.export_id, manifest_key=victim_b.manifest_key)
    s3_client.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=b"{}")
    # The attacker's rows: succeeded, past expiry, manifest_key naming the whole prefix / another
    # tenant's folder; each with a folder of its own, which is the only thing to delete.
    root_row = insert_row(
        pg, tenant="t-001", expires_in=timedelta(minutes=-1), manifest_key=f"{prefix}/manifest.json"
    )
    other_row = insert_row(
        pg, tenant="t-001", expires_in=timedelta(minutes=-1), manifest_key=victim_b.manifest_key
    )
    own = [ExportLocation(prefix, "t-001", "orders", rid) for rid in (root_row, other_row)]
    for location in own:
        put_export(s3_client, bucket, location)
    survivors = keys_under(s3_client, bucket, prefix + "/")
    survivors = [k for k in survivors if not any(k.startswith(loc.folder) for loc in own)]
    assert len(survivors) == 7  # two exports of three objects, and the root manifest

    report = run_janitor(store, s3_client, bucket, prefix, timedelta(hours=1))

    assert keys_under(s3_client, bucket, prefix + "/") == survivors
    assert report.deleted_objects == 6  # the two attacker rows' own folders, nothing else
    assert {store.get(r).status for r in (root_row, other_row)} == {"expired"}
    assert {store.get(v.export_id).status for v in (victim_a, victim_b)} == {"succeeded"}


def test_export_location_owns_only_its_own_flat_folder():
    loc = ExportLocation("exports", "t-001", "orders", "abc")
    assert loc.owns(loc.file_key(1, "csv.gz")) and loc.owns(loc.manifest_key) and loc.owns(loc.success_key)
    for key in (
        "exports/manifest.json",
        "exports/tenant=t-001/orders/abcd/manifest.json",  # a sibling sharing the string prefix
        "exports/tenant=t-002/orders/abc/part-00001.csv",
        loc.folder,
        loc.folder + "../x",
        loc.folder + "..",
        loc.folder + "sub/part-00001.csv",
        None,
    ):
        assert not loc.owns(key), key
        with pytest.raises(Rejected, match="is not an object of export folder"):
            loc.require_own(key)
    for resource, export_id in (("../x", "abc"), ("orders", "a/b"), ("orders", ".."), ("orders", "a\n")):
        with pytest.raises(Rejected, match="cannot name an export folder"):
            ExportLocation("exports", "t-001", resource, export_id)


def test_delete_prefix_refuses_anything_but_an_export_folder(s3_client, bucket, prefix):
    s3_client.put_object(Bucket=bucket, Key=f"{prefix}/tenant=t-001/orders/x/part-00001.csv", Body=b"x")
    for wide in (f"{prefix}/", f"{prefix}/tenant=t-001/", f"{prefix}/tenant=t-001/orders/", "/", "a/../b/c/"):
        with pytest.raises(Rejected, match="is not an export folder"):
            delete_prefix(s3_client, bucket, wide)
    assert len(keys_under(s3_client, bucket, prefix + "/")) == 1


# --- relink ---------------------------------------------------------------------------


def test_relink_signs_only_the_rows_own_folder_and_never_an_expired_export(
    store, pg, s3_client, bucket, prefix, monkeypatch, capsys
):
    monkeypatch.setenv("EXPORT_BUCKET", bucket)
    monkeypatch.setenv("EXPORT_PREFIX", prefix)
    victim = ExportLocation(prefix, "t-002", "orders", str(uuid.uuid4()))
    put_export(s3_client, bucket, victim, b"id\nvictim data\n")
    insert_row(pg, tenant="t-002", request_id=victim.export_id, manifest_key=victim.manifest_key)
    # Tenant t-001's row names t-002's manifest.
    rid = insert_row(pg, tenant="t-001", manifest_key=victim.manifest_key)
    own = ExportLocation(prefix, "t-001", "orders", rid)
    put_export(s3_client, bucket, own, b"id\nown data\n")

    assert main(["relink", rid, "--hours", "2"]) == 0
    url = capsys.readouterr().out.strip()
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"id\nown data\n"
        # The name finalize gives the file.
        assert resp.headers["Content-Disposition"] == attachment(download_name(own, 1, "csv"))
    row = store.get(rid)
    assert row.download_url == url
    assert timedelta(hours=1, minutes=58) < row.expires_at - datetime.now(UTC) <= timedelta(hours=2)

    # A row whose own folder holds nothing gets no link (and never the folder it names).
    empty = insert_row(pg, tenant="t-001", manifest_key=victim.manifest_key)
    assert main(["relink", empty]) == 1
    err = capsys.readouterr().err
    assert "cannot get a new link" in err and "files are gone or incomplete" in err
    assert store.get(empty).download_url == "https://old.example/link"

    # Expired (janitor not yet run) and not-succeeded rows are refused with exit 1.
    expired = insert_row(pg, tenant="t-001", expires_in=timedelta(minutes=-5))
    put_export(s3_client, bucket, ExportLocation(prefix, "t-001", "orders", expired))
    assert main(["relink", expired]) == 1
    assert "it expired" in capsys.readouterr().err
    assert store.get(expired).download_url == "https://old.example/link"
    failed = insert_row(pg, tenant="t-001", status="failed")
    assert main(["relink", failed]) == 1
    assert "status: failed" in capsys.readouterr().err


# --- link expiry bounded by the credentials ------------------------------------------


def test_link_expiry_is_bounded_by_the_signing_credentials(
    store, pg, s3_client, bucket, prefix, stack_env, monkeypatch, capsys
):
    temp = refreshable_client(stack_env, timedelta(hours=1))
    # What the row promises is what the link lasts: relink --hours 24 with credentials that
    # expire in 1 h gives a link of at most 1 h, and says so in expires_at.
    monkeypatch.setenv("EXPORT_BUCKET", bucket)
    monkeypatch.setenv("EXPORT_PREFIX", prefix)
    monkeypatch.setattr("export_pipelines.cli.exports.s3_client", lambda settings: temp)
    own = ExportLocation(prefix, "t-001", "orders", str(uuid.uuid4()))
    rid = insert_row(pg, tenant="t-001", request_id=own.export_id, manifest_key=own.manifest_key)
    put_export(s3_client, bucket, own)
    assert main(["relink", rid, "--hours", "24"]) == 0
    url = capsys.readouterr().out.strip()
    assert url_expires_in(url) <= 3600
    assert store.get(rid).expires_at <= datetime.now(UTC) + timedelta(hours=1)
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200  # a link, not an error

    from export_pipelines.core.storage.links import MAX_LINK_EXPIRY, link_expiry, presign, presign_link

    assert link_expiry(temp, timedelta(hours=24)) <= timedelta(hours=1)
    loc = ExportLocation(prefix, "t-001", "orders", "creds")
    key = put_export(s3_client, bucket, loc)
    signed = presign_link(temp, bucket, key, "x.csv", timedelta(hours=24))
    assert url_expires_in(signed.url) <= 3600
    assert signed.expires_at <= datetime.now(UTC) + timedelta(hours=1)
    assert url_expires_in(presign(temp, bucket, key, "x.csv", timedelta(hours=24))) <= 3600
    # Long-term keys: the request, up to SigV4's 7 days; a session token of unknown expiry: 12 h.
    assert link_expiry(s3_client, timedelta(hours=24)) == timedelta(hours=24)
    assert link_expiry(s3_client, timedelta(days=30)) == MAX_LINK_EXPIRY
    session = botocore.session.get_session()
    session._credentials = Credentials("a", "b", "session-token")
    with_token = boto3.session.Session(botocore_session=session).client("s3", region_name="us-east-1")
    assert link_expiry(with_token, timedelta(hours=24)) == timedelta(hours=12)
    two_hours = timedelta(hours=2)
    assert link_expiry(with_token, timedelta(hours=24), unknown_session_lifetime=two_hours) == two_hours
    with pytest.raises(ConfigurationError, match="signing credentials expire now"):
        link_expiry(refreshable_client(stack_env, timedelta(seconds=-5)), timedelta(hours=1))


# --- Content-Disposition -------------------------------------------------------------


def parsed_filename(header: str) -> str | None:
    """The file name a browser takes from a Content-Disposition, parsed by Python's email package
    (RFC 2231 decoding included); `filename*` wins over `filename`, as RFC 6266 section 4.3 says.
    (email's own get_filename takes the first of the two, which is why the preference is here.)"""
    message = email.message.Message()
    message["Content-Disposition"] = header
    params = message.get_params(header="content-disposition") or []
    names = [value for key, value in params if key == "filename"]
    extended = [value for value in names if isinstance(value, tuple)]  # filename*=charset''…
    chosen = extended[0] if extended else (names[0] if names else None)
    return None if chosen is None else email.utils.collapse_rfc2231_value(chosen)


def test_download_names_are_ascii_headers_with_the_utf8_name(s3_client, bucket, prefix):
    loc = ExportLocation(prefix, "Müller & Söhne 東京", "orders", "e-1")
    name = download_name(loc, 1, "csv.gz")
    assert name == "orders-Müller___Söhne_東京-e-1-00001.csv.gz"
    header = attachment(name)
    assert header.isascii()
    assert header.startswith('attachment; filename="orders-Muller___Sohne___-e-1-00001.csv.gz"; ')
    assert parsed_filename(header) == name
    key = put_export(s3_client, bucket, loc)
    url = s3_client.generate_presigned_url(
        "get_object",
        Params={"Bucket": bucket, "Key": key, "ResponseContentDisposition": header},
        ExpiresIn=300,
    )
    with urllib.request.urlopen(url, timeout=10) as resp:
        served = resp.headers["Content-Disposition"]
    assert served.isascii() and parsed_filename(served) == name
    # The upload path stores the same header on the object itself.
    s3_client.put_object(Bucket=bucket, Key=loc.file_key(2, "csv"), Body=b"x", ContentDisposition=header)
    stored = s3_client.head_object(Bucket=bucket, Key=loc.file_key(2, "csv"))["ContentDisposition"]
    assert parsed_filename(stored) == name
    # ASCII names keep the plain form; quotes, slashes and controls never reach the header.
    assert attachment("orders-t-003-x-00001.csv") == 'attachment; filename="orders-t-003-x-00001.csv"'
    hostile = download_name(ExportLocation(prefix, 'a"b\\c/d\r\ne\u202e', "orders", "x"), 1, "csv")
    assert hostile == "orders-a_b_c_d__e_-x-00001.csv"


# --- the database URL's password -----------------------------------------------------


def test_a_malformed_password_escape_never_reaches_the_error(source_url, monkeypatch, capsys):
    host = source_url.split("@", 1)[1]
    bad = f"postgresql://postgres:p%zzsecret@{host}"

    def refused(attempt: Any) -> None:
        with pytest.raises(ConfigurationError) as info:
            attempt()
        text = "".join(traceback.format_exception(info.value))
        assert "zzsecret" not in text and "p%zz" not in text
        assert "SOURCE_DATABASE_URL" in str(info.value) and "password" in str(info.value)

    refused(lambda: connect(bad))  # every export query's connection (core/engine/query.py)
    refused(lambda: RequestStore(bad).migrate_once().get(str(uuid.uuid4())))  # the stores, the migration
    from export_pipelines.core.storage.pg_connect import open_connection

    refused(lambda: open_connection(bad))
    # The CLI says the same, on stderr, without the password.
    monkeypatch.setenv("SOURCE_DATABASE_URL", bad)
    with pytest.raises(SystemExit) as exited:
        main(["status", str(uuid.uuid4())])
    assert "SOURCE_DATABASE_URL" in str(exited.value.code) and "zzsecret" not in str(exited.value.code)
    captured = capsys.readouterr()
    assert "zzsecret" not in captured.err + captured.out
    # A password libpq quotes in another error (here as the port) is scrubbed from it.
    echoed = f"postgresql://postgres:s3cretpw@{host.split('/')[0].split(':')[0]}/db?port=s3cretpw"
    with pytest.raises(psycopg.Error) as info:  # psycopg's own class, kept for callers
        open_connection(echoed)
    text = "".join(traceback.format_exception(info.value))
    assert "s3cretpw" not in text and "***" in str(info.value)


# --- csv_excel formulas behind whitespace and invisible characters -------------------

HIDDEN_FORMULAS = [
    " =1+1",
    "\n=1+1",
    "\u00a0=1+1",
    "\u3000=1+1",
    "\u200b=1+1",
    "\ufeff=1+1",
    "\uff1d1+1",
    "\uff0b1+1",
    "\uff0d1+1",
    "\uff20SUM(A1)",
    " \u200b\u00a0 @SUM(A1)",
    "\u202e=1+1",
    "  +A1",
]
# Unchanged (or "="…"" as before): the excel profile's other cells stay exactly what they were.
KEPT = {
    "plain": "plain",
    "a=1+1": "a=1+1",
    "\u200b zero-width": "\u200b zero-width",
    " leading and trailing spaces ": " leading and trailing spaces ",
    "00123": '="00123"',
    " -5": '=" -5"',
    "=SUM(A1:A2)": "'=SUM(A1:A2)",
    "-1": "'-1",
    "\tstarts with a tab": "'\tstarts with a tab",
}
FORMULA_CATALOG = {
    "resources": {
        "links_formula": {
            "table": "public.links_formula",
            "tenant_column": "tenant_id",
            "key": "id",
            "columns": ["tenant_id", "id", "note"],
        }
    }
}


@pytest.fixture
def formula_csv(source_url, s3_client, bucket, prefix) -> bytes:
    """The csv_excel export (uncompressed, as the profile's default) of HIDDEN_FORMULAS and KEPT."""
    values = [*HIDDEN_FORMULAS, *KEPT]
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.links_formula")
        conn.execute(
            "CREATE TABLE public.links_formula (tenant_id text, id int, note text, PRIMARY KEY (tenant_id, id))"
        )
        for number, value in enumerate(values, start=1):
            conn.execute("INSERT INTO public.links_formula VALUES ('f-1', %s, %s)", [number, value])
    catalog = parse_catalog(FORMULA_CATALOG, "links formula catalog")
    request = build_request(
        catalog, tenant_id="f-1", resource="links_formula", format="csv_excel", export_id="formula"
    )
    plan = plan_export(source_url, catalog, request, prefix)
    clear_success_marker(s3_client, bucket, plan.location)
    outcome = run_export(plan, conninfo=source_url, catalog=catalog, s3_client=s3_client, bucket=bucket)
    done = finalize_export(s3_client, bucket, plan, outcome)
    (link,) = done.files
    raw = s3_client.get_object(Bucket=bucket, Key=link.key)["Body"].read()
    return gzip.decompress(raw) if link.key.endswith(".gz") else raw


def test_csv_excel_neutralises_formulas_behind_invisible_characters(formula_csv):
    header, *rows = list(csv.reader(io.StringIO(formula_csv.decode("utf-8-sig"), newline="")))
    assert header == ["tenant_id", "id", "note"]
    got = {int(r[1]): r[2] for r in rows}
    for number, value in enumerate(HIDDEN_FORMULAS, start=1):
        assert got[number] == "'" + value, (number, value)
    for number, (value, want) in enumerate(KEPT.items(), start=len(HIDDEN_FORMULAS) + 1):
        assert got[number] == want, (number, value)


def test_libreoffice_reads_those_cells_as_text(formula_csv, tmp_path):
    """LibreOffice Calc imports the file as a user opening it would (formulas evaluated): every
    hidden formula arrives as text starting with the apostrophe, none as a formula or its value."""
    import openpyxl

    from export_pipelines_tests.core.engine.encoders.test_libreoffice import CSV_IMPORT, convert

    soffice = shutil.which("soffice")
    if soffice is None:
        message = "soffice not found: scripts/test.sh installs libreoffice-calc"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    source = tmp_path / "formula.csv"
    source.write_bytes(formula_csv)
    converted = convert(soffice, source, "xlsx", tmp_path, infilter=CSV_IMPORT)
    for data_only in (False, True):  # the cell as stored (no "=…" formula) and as shown
        sheet = openpyxl.load_workbook(converted, data_only=data_only).active
        notes = [row[2] for row in sheet.iter_rows(min_row=2, values_only=True)]
        for note, value in zip(notes[: len(HIDDEN_FORMULAS)], HIDDEN_FORMULAS, strict=True):
            assert isinstance(note, str) and note.startswith("'"), (value, note)


def test_finalize_promises_only_what_the_credentials_allow(
    source_url, catalog, s3_client, bucket, prefix, stack_env
):
    """The export's own links (finalize → request row, webhook) are bounded the same way: with
    credentials that expire in 1 h, a 24 h request gets links and an expires_at of at most 1 h."""
    from export_pipelines.core.engine.exporter import run_export
    from export_pipelines.core.engine.manifest import finalize_export
    from export_pipelines.core.engine.plan import plan_export
    from export_pipelines.core.requests.request import build_request

    temp = refreshable_client(stack_env, timedelta(hours=1))
    request = build_request(
        catalog, tenant_id="t-001", resource="orders", export_id="creds-finalize", link_expiry_hours=24
    )
    plan = plan_export(source_url, catalog, request, prefix)
    outcome = run_export(plan, conninfo=source_url, catalog=catalog, s3_client=temp, bucket=bucket)
    done = finalize_export(temp, bucket, plan, outcome)
    assert done.expires_at <= datetime.now(UTC) + timedelta(hours=1)
    for url in [done.manifest_url, *(f.url for f in done.files)]:
        assert url_expires_in(url) <= 3600
    with urllib.request.urlopen(done.files[0].url, timeout=10) as resp:
        assert resp.status == 200
