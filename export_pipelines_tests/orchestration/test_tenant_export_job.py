"""tenant_export_job through Dagster (execute_in_process) against the real services."""

from __future__ import annotations

import csv
import gzip
import io
import json

import dagster as dg
import openpyxl
import pyarrow as pa
import pytest

from export_pipelines.core.storage.s3 import open_uploads
from export_pipelines.orchestration.run_config import export_run_config
from export_pipelines.orchestration.run_page import human_size
from export_pipelines_tests.support.readback import csv_rows, read_manifest
from export_pipelines_tests.support.services import run_export_job


@pytest.fixture
def resources(dagster_resources):
    return dagster_resources


def run(resources, **config):
    instance = dg.DagsterInstance.ephemeral()
    result = run_export_job(
        run_config=export_run_config(**config),
        resources=resources,
        raise_on_error=False,
        instance=instance,
    )
    result.logs = [e.user_message for e in instance.all_logs(result.run_id)]  # as the UI shows them
    return result


def test_job_exports_and_reports_metadata(resources, s3_client, bucket, prefix, pg):
    result = run(resources, tenant_id="t-005", resource="orders", request_id="req-123")
    assert result.success
    done = result.output_for_node("exports.finalize")
    expected = pg.execute("SELECT count(*) FROM orders WHERE tenant_id = 't-005'").fetchone()[0]
    assert done.rows == expected > 0
    assert done.manifest_key == f"{prefix}/tenant=t-005/orders/req-123/manifest.json"
    manifest = read_manifest(s3_client, bucket, done.manifest_key)
    _, rows = csv_rows(s3_client, bucket, manifest)
    assert len(rows) == expected and {r[1] for r in rows} == {"t-005"}

    outputs = {e.step_key: e.step_output_data.metadata for e in result.all_events if e.is_successful_output}
    assert outputs["exports.count_rows"]["rows_total"].value == expected
    fin = outputs["exports.finalize"]
    assert fin["rows"].value == expected and fin["files"].value == 1
    assert fin["rows_per_second"].value > 0 and fin["seconds"].value > 0
    assert isinstance(fin["file_00001_url"], dg.UrlMetadataValue)
    assert isinstance(fin["manifest_url"], dg.UrlMetadataValue)
    progress = [m for m in result.logs if m.startswith("progress:")]
    assert progress and progress[-1].startswith(f"progress: {expected}/{expected} rows (100.0%)")


def test_invalid_config_fails_with_the_allowed_values(resources, s3_client, bucket, prefix):
    result = run(resources, tenant_id="t-005", resource="orders", columns=["id", "secret"])
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "columns: unknown column(s) 'secret'" in failure.message
    assert "allowed: amount, attrs, created_at" in failure.message
    assert open_uploads(s3_client, bucket, prefix) == []


def test_definitions_load_as_dagster_loads_them():
    # In a fresh process, as `dagster dev` / the daemon load the code location (and free of
    # the process-wide state other tests leave behind).
    import subprocess
    import sys
    from pathlib import Path

    dagster = Path(sys.executable).parent / "dagster"
    out = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "export_pipelines.definitions"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "All code locations passed validation" in out.stderr + out.stdout


@pytest.mark.parametrize(
    ("fmt", "compression", "extension"),
    [
        ("jsonl", "zstd", "jsonl.zst"),
        ("json", None, "json.gz"),
        ("xlsx", None, "xlsx"),
        ("csv_excel", None, "csv"),
    ],
)
def test_every_format_from_run_config(resources, s3_client, bucket, pg, fmt, compression, extension):
    result = run(
        resources,
        tenant_id="t-005",
        resource="orders",
        format=fmt,
        compression=compression,
        columns=["id", "note"],
    )
    assert result.success
    done = result.output_for_node("exports.finalize")
    manifest = read_manifest(s3_client, bucket, done.manifest_key)
    (f,) = manifest["files"]
    assert f["key"].endswith("part-00001." + extension) and manifest["format"] == fmt
    raw = s3_client.get_object(Bucket=bucket, Key=f["key"])["Body"].read()
    expected = pg.execute("SELECT id, note FROM orders WHERE tenant_id = 't-005' ORDER BY id").fetchall()
    if fmt == "xlsx":
        sheet = openpyxl.load_workbook(io.BytesIO(raw)).active
        got = [(r[0], r[1]) for r in sheet.iter_rows(min_row=2, values_only=True)]
        assert f["sheets"] == [{"name": "Sheet1", "rows": len(expected)}]
        # Excel strips nothing, but XML turns CR into LF unless it is a reference: all kept.
        assert got == [(i, n) for i, n in expected]
    elif fmt == "csv_excel":
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))[1:]
        assert [int(r[0]) for r in rows] == [i for i, _ in expected]
    else:
        if compression == "zstd":
            with pa.input_stream(pa.py_buffer(raw), compression="zstd") as stream:
                text = stream.read().decode()
        else:
            text = gzip.decompress(raw).decode()
        objects = [json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else json.loads(text)
        # bigint is a JSON string of its digits (type contract: no reader rounds it).
        assert [(o["id"], o["note"]) for o in objects] == [(str(i), n) for i, n in expected]
    columns = {c["name"]: c for c in manifest["columns"]}
    assert columns["note"]["postgres_type"] == "text" and columns["note"]["representation"]


def test_links_one_click_from_the_run_and_progress_as_people_read_it(resources, prefix):
    result = run(resources, tenant_id="t-005", resource="orders", request_id="req-606")
    assert result.success
    done = result.output_for_node("exports.finalize")
    # The download links: the materialization of exports/orders in the run's own event log.
    (event,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]
    materialization = event.event_specific_data.materialization
    assert materialization.asset_key == dg.AssetKey(["exports", "orders"])
    meta = materialization.metadata
    assert meta["download"] == dg.MetadataValue.url(done.files[0].url)
    assert meta["manifest"] == dg.MetadataValue.url(done.manifest_url)
    assert meta["tenant"].value == "t-005" and meta["export_id"].value == "req-606"
    # Sizes in the unit that fits, with real precision (a 26 KB file is "26 KB", not "0.0 MB").
    size = human_size(done.bytes)
    assert done.bytes < 1_000_000 and size.endswith(" KB") and not size.startswith("0"), size
    assert "t-005" in meta["summary"].value and size in meta["summary"].value
    assert meta["size"].value == size
    # Progress: percent, size uploaded, rows/s and an ETA, not raw byte counts.
    last = [m for m in result.logs if m.startswith("progress:")][-1]
    assert f" {size} uploaded, " in last and " rows/s, ETA " in last and " bytes" not in last, last
    assert "file 1: 1 part(s) uploaded so far" in last, last
    fin = {e.step_key: e.step_output_data.metadata for e in result.all_events if e.is_successful_output}
    assert fin["exports.export_files"]["size"].value == size
    assert "rows/s" in fin["exports.finalize"]["throughput"].value


def test_launchpad_opens_with_the_export_config_block_only():
    """What the launchpad pre-fills (GraphQL runConfigSchema.rootDefaultYaml): the export's config
    block, no resource settings; and the run config keeps its shape (ops: count_rows: config:)."""
    import warnings

    import yaml
    from dagster._core.snap import JobSnap
    from dagster_graphql.schema.run_config import default_values_yaml_from_type_snap

    from export_pipelines.orchestration.definitions import build_definitions
    from export_pipelines.settings import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        defs = build_definitions(Settings.from_env())
        snap = JobSnap.from_job_def(defs.resolve_job_def("tenant_export_job"))
    schema = snap.config_schema_snapshot
    root = schema.get_config_snap(snap.mode_def_snaps[0].root_config_key)
    scaffold = yaml.safe_load(default_values_yaml_from_type_snap(schema, root))
    assert list(scaffold) == ["ops"], scaffold
    config = scaffold["ops"]["count_rows"]["config"]
    # Required fields have no default (the launchpad's check asks for them); optional ones do.
    assert "tenant_id" not in config and "resource" not in config and config["format"] == "csv"


def test_a_run_without_tenant_is_refused_before_it_starts(resources):
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        run_export_job(
            run_config={"ops": {"count_rows": {"config": {"resource": "orders"}}}},
            resources=resources,
            instance=dg.DagsterInstance.ephemeral(),
        )
    assert "tenant_id" in str(refused.value)


def test_step_outputs_go_to_the_bucket_with_the_s3_io_manager(resources, s3_client, bucket, prefix):
    """EXPORT_IO_MANAGER=s3 (several hosts): every step's output is kept under {prefix}/_dagster/,
    through dagster-aws's IO manager on the exports' own S3 settings."""
    import dataclasses

    from export_pipelines.orchestration.io_managers import io_manager_resources
    from export_pipelines.settings import Settings

    settings = dataclasses.replace(Settings.from_env(), prefix=prefix)
    io = io_manager_resources(settings, resources["s3"], kind="s3")
    result = run({**resources, **io}, tenant_id="t-005", resource="orders", request_id="req-io")
    assert result.success
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_dagster/").get("Contents", [])
    steps = {o["Key"].split("/")[-2] for o in listed}
    # (notify's one output is the asset's materialization: nothing to keep)
    assert {"exports.count_rows", "exports.export_files", "exports.finalize"} <= steps


def test_the_run_materializes_the_exports_asset_of_its_resource_and_refuses_another(
    resources, s3_client, bucket, prefix, tmp_path
):
    """Two catalog resources, two assets: launched for the job, a run materializes the asset of the
    resource in its config (no other); "Materialize" on exports/orders_copy with `resource: orders`
    in the config is refused before anything is read or written."""
    import dataclasses
    from importlib import resources as package_files

    import yaml

    from export_pipelines.settings import Settings

    catalog = yaml.safe_load(package_files.files("export_pipelines").joinpath("catalog.yaml").read_text())
    catalog["resources"]["orders_copy"] = dict(catalog["resources"]["orders"])
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    settings = dataclasses.replace(Settings.from_env(), catalog_path=str(path))
    config = export_run_config(tenant_id="t-005", resource="orders", request_id="req-asset")

    def materialized(result: dg.ExecuteInProcessResult) -> list[dg.AssetKey]:
        return [m.asset_key for m in result.asset_materializations_for_node("exports")]

    instance = dg.DagsterInstance.ephemeral()
    whole = run_export_job(resources=resources, settings=settings, run_config=config, instance=instance)
    assert whole.success and materialized(whole) == [dg.AssetKey(["exports", "orders"])]

    kept = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}
    wrong = run_export_job(
        resources=resources,
        settings=settings,
        run_config={
            "ops": {
                "count_rows": {"config": {**config["ops"]["count_rows"]["config"], "request_id": "req-x"}}
            }
        },
        asset_selection=[dg.AssetKey(["exports", "orders_copy"])],
        instance=instance,
        raise_on_error=False,
    )
    assert not wrong.success and materialized(wrong) == []
    (failure,) = [e for e in wrong.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "resource: 'orders' is not the exports asset" in message and "allowed: orders_copy" in message
    after = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}
    assert after == kept  # nothing of req-x was written
