"""The `s3` writer: the engine as it is, with the tenant's client and bucket — multipart parts as
they are produced, checkpointed, a crashed export continuing at its next part; manifest, signature
and `_SUCCESS` last, as in ours."""

from __future__ import annotations

from collections.abc import Callable

from export_pipelines.core.delivery.destinations import s3 as s3_destination
from export_pipelines.core.delivery.destinations.config import Destination
from export_pipelines.core.engine.checkpoints import CheckpointStore
from export_pipelines.core.engine.exporter import run_export
from export_pipelines.core.engine.manifest import clear_success_marker, finalize_export
from export_pipelines.core.engine.plan import ExportPlan
from export_pipelines.core.engine.signing import ManifestSigner
from export_pipelines.core.errors import DestinationError
from export_pipelines.core.requests.catalog import Catalog
from export_pipelines.core.results import ExportOutcome, ExportProgress


def to_s3(
    plan: ExportPlan,
    destination: Destination,
    *,
    conninfo: str,
    catalog: Catalog,
    signer: ManifestSigner | None,
    checkpoints: CheckpointStore | None,
    allow_private: bool,
    part_size: int,
    max_parts_in_flight: int,
    on_progress: Callable[[ExportProgress], None] | None,
    abort_on_error: bool,
    statement_timeout_seconds: float | None,
) -> ExportOutcome:
    bucket = destination.config["bucket"]
    try:
        client = s3_destination.destination_client(destination, allow_private=allow_private)
        s3_destination.preflight(client, destination)
        clear_success_marker(client, bucket, plan.location)
        outcome = run_export(
            plan,
            conninfo=conninfo,
            catalog=catalog,
            s3_client=client,
            bucket=bucket,
            part_size=part_size,
            max_parts_in_flight=max_parts_in_flight,
            on_progress=on_progress,
            checkpoints=checkpoints,
            abort_on_error=abort_on_error,
            statement_timeout_seconds=statement_timeout_seconds,
        )
        finalize_export(client, bucket, plan, outcome, checkpoints, signer=signer, links=False)
        return outcome
    except DestinationError:
        raise
    except Exception as exc:
        if _is_storage_error(exc):
            raise s3_destination.s3_error(_storage_cause(exc), destination) from exc
        raise


def _storage_cause(exc: BaseException) -> BaseException:
    """The botocore error behind an engine error (S3ConfigurationError wraps the ClientError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__module__.startswith("botocore."):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _is_storage_error(exc: BaseException) -> bool:
    from export_pipelines.core.errors import S3ConfigurationError

    return isinstance(exc, S3ConfigurationError) or type(_storage_cause(exc)).__module__.startswith(
        "botocore."
    )
