"""S3 faults injected between the exporter and the real S3 server (S3FaultProxy): each is ridden
over by botocore's bounded retries and our checks, or ends in an error with a resumable checkpoint.
The files are compared byte for byte with an undisturbed export; `_SUCCESS` only ever sits
beside complete files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import plan_export
from export_pipelines.core.requests.request import build_request
from export_pipelines.core.storage.s3 import make_s3_client, open_uploads
from export_pipelines_tests.support.s3_fault_proxy import (
    S3FaultProxy,
    complete_200_error,
    delay,
    error,
    op,
    reset_after,
    reset_before,
)

BIG = "t-big"
PART = 5 << 20
KWARGS = {"format": "csv", "compression": "none"}  # ~15 MB: three 5 MiB parts


@pytest.fixture
def proxy(stack_env) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(stack_env["AWS_ENDPOINT_URL"]) as p:
        yield p


def client_via(proxy: S3FaultProxy, **kwargs: Any) -> Any:
    return make_s3_client(endpoint_url=proxy.endpoint_url, **kwargs)


@pytest.fixture
def checkpoints(source_url) -> Iterator[CheckpointStore]:
    store = CheckpointStore(source_url).migrate_once()
    yield store
    store.close()


def digests(client: Any, bucket: str, keys: list[str]) -> list[str]:
    return [hashlib.sha256(client.get_object(Bucket=bucket, Key=k)["Body"].read()).hexdigest() for k in keys]


def export(catalog, source_url, client, bucket, prefix, export_id, checkpoints=None, abort_on_error=False):
    request = build_request(catalog, resource="orders", tenant_id=BIG, export_id=export_id, **KWARGS)
    plan = plan_export(source_url, catalog, request, prefix, checkpoints=checkpoints)
    clear_success_marker(client, bucket, plan.location)
    outcome = run_export(
        plan,
        conninfo=source_url,
        catalog=catalog,
        s3_client=client,
        bucket=bucket,
        part_size=PART,
        checkpoints=checkpoints,
        abort_on_error=abort_on_error,
    )
    done = finalize_export(client, bucket, plan, outcome, checkpoints)
    return plan, outcome, done


@pytest.fixture
def clean(catalog, source_url, s3_client, bucket, prefix) -> list[str]:
    _, outcome, _ = export(catalog, source_url, s3_client, bucket, prefix, "clean")
    assert sum(f.parts for f in outcome.files) >= 3
    return digests(s3_client, bucket, [f.key for f in outcome.files])


RIDDEN_OVER = {
    "503-slowdown-upload-part": (op("UploadPart", part_number=2), error(503, "SlowDown", "Reduce rate"), 2),
    "500-upload-part": (op("UploadPart", part_number=3), error(500, "InternalError", "oops"), 1),
    "500-complete": (op("CompleteMultipartUpload"), error(500, "InternalError", "oops"), 1),
    "reset-before-upload-part": (op("UploadPart", part_number=2), reset_before(), 1),
    "reset-after-upload-part": (op("UploadPart", part_number=2), reset_after(), 1),
    "reset-before-complete": (op("CompleteMultipartUpload"), reset_before(), 1),
    "reset-after-complete": (op("CompleteMultipartUpload"), reset_after(), 1),
    "200-error-complete-not-applied": (op("CompleteMultipartUpload"), complete_200_error(applied=False), 1),
    "200-error-complete-applied": (op("CompleteMultipartUpload"), complete_200_error(applied=True), 1),
    "reset-create-upload": (op("CreateMultipartUpload"), reset_before(), 1),
    "500-manifest-put": (op("PutObject"), error(500, "InternalError", "oops"), 1),
}


@pytest.mark.parametrize("fault", list(RIDDEN_OVER), ids=list(RIDDEN_OVER))
def test_transient_s3_fault_is_ridden_over(
    fault, proxy, catalog, source_url, s3_client, bucket, prefix, checkpoints, clean
):
    match, action, times = RIDDEN_OVER[fault]
    rule = proxy.add_fault(match, action, times=times)
    client = client_via(proxy)
    plan, outcome, _ = export(catalog, source_url, client, bucket, prefix, "faulty", checkpoints)
    assert rule.fired == times, "the fault must actually have happened"
    assert digests(s3_client, bucket, [f.key for f in outcome.files]) == clean
    assert [f.sha256 for f in outcome.files] == clean
    assert open_uploads(s3_client, bucket, plan.location.folder) == []
    s3_client.head_object(Bucket=bucket, Key=plan.location.success_key)


def test_slow_server_past_the_read_timeout_is_retried(
    proxy, catalog, source_url, s3_client, bucket, prefix, checkpoints, clean
):
    # The read timeout stays well above what a request takes through the in-process proxy on a
    # loaded 2-core machine (a 1 s timeout also timed out healthy requests there, until botocore
    # gave up); the delay, far above the timeout, ends when the client gives up and closes.
    rule = proxy.add_fault(op("UploadPart", part_number=2), delay(60.0), times=1)
    client = client_via(proxy, read_timeout=5)
    _, outcome, _ = export(catalog, source_url, client, bucket, prefix, "slow", checkpoints)
    proxy.wait_idle()
    assert rule.fired == 1
    assert digests(s3_client, bucket, [f.key for f in outcome.files]) == clean


def test_s3_down_fails_with_a_resumable_checkpoint_then_resumes(
    proxy, catalog, source_url, s3_client, bucket, prefix, checkpoints, clean
):
    """Part 3 keeps failing: botocore gives up, the export fails with S3's error and no
    _SUCCESS; its checkpoint holds parts 1-2, and the next attempt continues from part 3."""
    proxy.add_fault(op("UploadPart", part_number=3), error(503, "SlowDown", "Reduce rate"), times=None)
    client = client_via(proxy, max_attempts=3)
    with pytest.raises(ClientError, match="SlowDown"):
        export(catalog, source_url, client, bucket, prefix, "down", checkpoints)
    request = build_request(catalog, resource="orders", tenant_id=BIG, export_id="down", **KWARGS)
    location = plan_export(source_url, catalog, request, prefix, checkpoints=checkpoints).location
    with pytest.raises(ClientError):
        s3_client.head_object(Bucket=bucket, Key=location.success_key)
    (open_file,) = checkpoints.files(location.folder, "bigint")
    assert [p.number for p in open_file.parts] == [1, 2]

    proxy.clear_faults()
    _, outcome, _ = export(catalog, source_url, client, bucket, prefix, "down", checkpoints)
    assert outcome.files[0].resumed_at_part == 3
    assert digests(s3_client, bucket, [f.key for f in outcome.files]) == clean
    assert open_uploads(s3_client, bucket, location.folder) == []


def test_last_attempt_aborts_its_upload(proxy, catalog, source_url, s3_client, bucket, prefix, checkpoints):
    """When no retry will come (abort_on_error), the failed export leaves no upload open."""
    proxy.add_fault(op("UploadPart", part_number=3), error(500, "InternalError", "down"), times=None)
    client = client_via(proxy, max_attempts=2)
    with pytest.raises(ClientError):
        export(catalog, source_url, client, bucket, prefix, "final", checkpoints, abort_on_error=True)
    assert open_uploads(s3_client, bucket, prefix) == []
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    assert not [o["Key"] for o in listed if "/final/" in o["Key"]], "nothing half-written is visible"


def test_manifest_put_failing_leaves_no_success_marker(
    proxy, catalog, source_url, s3_client, bucket, prefix, checkpoints
):
    proxy.add_fault(op("PutObject"), error(500, "InternalError", "down"), times=None)
    client = client_via(proxy, max_attempts=2)
    with pytest.raises(ClientError):
        export(catalog, source_url, client, bucket, prefix, "nomanifest", checkpoints)
    request = build_request(catalog, resource="orders", tenant_id=BIG, export_id="nomanifest", **KWARGS)
    location = plan_export(source_url, catalog, request, prefix, checkpoints=checkpoints).location
    with pytest.raises(ClientError):
        s3_client.head_object(Bucket=bucket, Key=location.success_key)
    # The files are complete and checkpointed: the retry only writes manifest and _SUCCESS.
    assert all(f.complete for f in checkpoints.files(location.folder, "bigint"))


def test_complete_applied_then_no_such_upload_on_retry_is_recognised(
    proxy, catalog, source_url, s3_client, bucket, prefix, checkpoints, clean
):
    """AWS answers a retried Complete that it already applied with NoSuchUpload (SeaweedFS says
    200): the exporter finds its upload token on the object and takes the file as complete."""
    applied = proxy.add_fault(op("CompleteMultipartUpload"), reset_after(), times=1)
    gone = proxy.add_fault(op("CompleteMultipartUpload"), error(404, "NoSuchUpload", "gone"), times=1)
    client = client_via(proxy)
    plan, outcome, _ = export(catalog, source_url, client, bucket, prefix, "ambiguous", checkpoints)
    assert applied.fired == gone.fired == 1
    assert digests(s3_client, bucket, [f.key for f in outcome.files]) == clean
    s3_client.head_object(Bucket=bucket, Key=plan.location.success_key)


def test_no_such_upload_without_our_object_is_an_error(
    proxy, catalog, source_url, s3_client, bucket, prefix, checkpoints
):
    """NoSuchUpload when nothing was completed (the upload was aborted under us) is not success."""
    proxy.add_fault(op("CompleteMultipartUpload"), error(404, "NoSuchUpload", "gone"), times=None)
    with pytest.raises(ClientError, match="NoSuchUpload"):
        export(catalog, source_url, client_via(proxy), bucket, prefix, "aborted", checkpoints)
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])
    assert not [o["Key"] for o in listed if "/aborted/" in o["Key"]]
