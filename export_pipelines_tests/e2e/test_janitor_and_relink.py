"""Link expiry and hygiene: the janitor expires old exports and aborts abandoned uploads; relink."""

from __future__ import annotations

import urllib.request

import psycopg

from export_pipelines.cli.main import main
from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.requests.queue import RequestQueue
from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines.orchestration.jobs import janitor_job
from export_pipelines.orchestration.resources import ExportSettings
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines_tests.support.services import run_export_job


def export_for_request(resources, store, tenant="t-009"):
    rid = store.create(tenant_id=tenant, resource="orders")
    result = run_export_job(
        run_config=export_run_config(tenant_id=tenant, resource="orders", request_id=rid), resources=resources
    )
    assert result.success
    return rid


def test_janitor_expires_exports_and_aborts_stale_uploads(
    dagster_resources, store, s3_client, bucket, prefix, source_url
):
    old = export_for_request(dagster_resources, store)
    fresh = export_for_request(dagster_resources, store, tenant="t-011")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE export_requests SET expires_at = now() - interval '1 minute' WHERE id = %s", [old]
        )
    folder = store.get(old).manifest_key.rsplit("/", 1)[0] + "/"
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=folder).get("Contents", [])
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in listed)
    assert names == ["_SUCCESS", "manifest.json", "manifest.json.sig", "part-00001.csv.gz"], names
    abandoned = s3_client.create_multipart_upload(
        Bucket=bucket, Key=f"{prefix}/tenant=x/orders/y/part-00001.csv.gz"
    )
    s3_client.upload_part(
        Bucket=bucket, Key=abandoned["Key"], UploadId=abandoned["UploadId"], PartNumber=1, Body=b"x"
    )
    outside = s3_client.create_multipart_upload(Bucket=bucket, Key="elsewhere/not-ours")
    # Checkpoints of exports nobody finished: one untouched for 8 days, one from an hour ago.
    CheckpointStore(source_url).migrate_once().close()
    with psycopg.connect(source_url, autocommit=True) as conn:
        for folder_name, age in ((f"{prefix}/abandoned/", "8 days"), (f"{prefix}/recent/", "1 hour")):
            conn.execute(
                "INSERT INTO export_checkpoints (folder, fingerprint, rows_total, updated_at) "
                "VALUES (%s, 'f', 1, now() - %s::interval)",
                [folder_name, age],
            )

    resources = {
        **dagster_resources,
        "export_settings": ExportSettings(bucket=bucket, prefix=prefix, abort_uploads_after_hours=0),
    }
    result = janitor_job.execute_in_process(resources=resources)
    assert result.success
    row = store.get(old)
    assert row.status == "expired" and row.download_url is None
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=folder)["KeyCount"] == 0
    assert store.get(fresh).status == "succeeded"
    kept = store.get(fresh).manifest_key
    assert s3_client.head_object(Bucket=bucket, Key=kept)["ContentLength"] > 0
    assert open_uploads(s3_client, bucket, prefix + "/") == []
    # Outside the prefix: left alone (then aborted here, so a rerun on the same server starts clean).
    assert outside["UploadId"] in [u["UploadId"] for u in open_uploads(s3_client, bucket, "elsewhere/")]
    s3_client.abort_multipart_upload(Bucket=bucket, Key=outside["Key"], UploadId=outside["UploadId"])
    with psycopg.connect(source_url, autocommit=True) as conn:
        left = conn.execute(
            "SELECT folder FROM export_checkpoints WHERE folder LIKE %s ORDER BY 1", [f"{prefix}/%"]
        ).fetchall()
    assert left == [(f"{prefix}/recent/",)]
    s3_client.abort_multipart_upload(Bucket=bucket, Key="elsewhere/not-ours", UploadId=outside["UploadId"])


def test_relink_issues_a_fresh_working_link(dagster_resources, store, capsys, monkeypatch, bucket, prefix):
    rid = export_for_request(dagster_resources, store)
    before = store.get(rid)
    monkeypatch.setenv("EXPORT_BUCKET", bucket)
    # relink finds the files where the service wrote them (EXPORT_PREFIX), not where a row says.
    monkeypatch.setenv("EXPORT_PREFIX", prefix)
    assert main(["relink", rid, "--hours", "2"]) == 0
    url = capsys.readouterr().out.strip()
    after = store.get(rid)
    assert after.download_url == url != before.download_url
    assert after.expires_at < before.expires_at  # 2 h instead of the default 24 h
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read()[:2] == b"\x1f\x8b"  # the gzip file itself
        relinked_name = resp.headers["Content-Disposition"]
    # The browser saves the file under the name finalize gave it (orders-t-009-<id>-00001.csv.gz).
    with urllib.request.urlopen(before.download_url, timeout=10) as resp:
        assert relinked_name == resp.headers["Content-Disposition"]
    assert relinked_name == f'attachment; filename="orders-t-009-{rid}-00001.csv.gz"'
    assert main(["relink", "00000000-0000-0000-0000-000000000000"]) == 1
    assert "cannot get a new link" in capsys.readouterr().err


def test_cli_request_checks_the_webhook_allowlist_like_the_sensor(
    store, capsys, monkeypatch, example_com_resolves
):
    monkeypatch.setenv("EXPORT_WEBHOOK_ALLOWLIST", ".example.com")
    args = ["request", "--tenant", "t-001", "--resource", "orders", "--webhook-url"]
    assert main([*args, "https://evil.test/hook"]) == 2
    assert "webhook_url: host 'evil.test' is not allowed; allowed: .example.com" in capsys.readouterr().err
    assert RequestQueue.on(store.conn).to_launch() == []
    assert main([*args, "https://hooks.example.com/x"]) == 0
    assert store.get(capsys.readouterr().out.strip()).webhook_url == "https://hooks.example.com/x"


def test_cli_request_and_status(store, capsys):
    assert (
        main(
            [
                "request",
                "--tenant",
                "t-001",
                "--resource",
                "orders",
                "--format",
                "parquet",
                "--filter",
                "status=paid",
                "--filter",
                "status=shipped",
                "--date-from",
                "2024-01-01",
            ]
        )
        == 0
    )
    rid = capsys.readouterr().out.strip()
    row = store.get(rid)
    assert row.status == "pending" and row.format == "parquet"
    assert row.filters == {"status": ["paid", "shipped"], "date_from": "2024-01-01"}
    assert main(["status", rid]) == 0
    out = capsys.readouterr().out
    assert "status:    pending" in out and "t-001" in out


def test_janitor_deletes_old_run_objects_and_never_an_export(s3_client, bucket, prefix):
    """Step outputs (EXPORT_IO_MANAGER=s3) and compute logs under {prefix}/_dagster/ go once old;
    an export's objects are not under that folder and stay, however old."""
    from datetime import UTC, datetime, timedelta

    from export_pipelines.core.engine.janitor import delete_old_run_objects
    from export_pipelines.core.storage.layout import ExportLocation

    run_objects = [
        f"{prefix}/_dagster/storage/run-1/count_rows/result",
        f"{prefix}/_dagster/compute_logs/x.out",
    ]
    export = ExportLocation(prefix, "t-002", "orders", "e-1")
    for key in [*run_objects, export.manifest_key, f"{prefix}/_dagsterish/kept"]:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    written = datetime.now(UTC)
    # Younger than the cut-off: kept.
    assert delete_old_run_objects(s3_client, bucket, prefix, written - timedelta(days=7)) == 0
    # Older than the cut-off (the clock moved on): deleted, and nothing else.
    assert delete_old_run_objects(s3_client, bucket, prefix, written + timedelta(minutes=5)) == 2
    left = [
        o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    ]
    assert sorted(left) == sorted([export.manifest_key, f"{prefix}/_dagsterish/kept"])
