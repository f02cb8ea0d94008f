# No `from __future__ import annotations` here, as in ops.py: Dagster reads op annotations at runtime.
"""How the export ops fail: retries over transient errors, and the final dg.Failure whose metadata
carries the tenant-facing code and message the failure sensor writes to the request row.

Shared by ops.py and the steps it calls (feed_steps.py, destination_steps.py), and by the monthly
export, the notify op and the sensors.
"""

import contextlib
from collections.abc import Iterator

import dagster as dg

from export_pipelines.core.errors import ExportCanceled, error_code, tenant_message

# The step failure metadata the failure sensor reads: what the tenant is told (code and message);
# the description and the logs keep the full error for operators.
ERROR_CODE_KEY = "error_code"
TENANT_ERROR_KEY = "tenant_error"


def failure(exc: BaseException, description: str) -> dg.Failure:
    """A final dg.Failure that carries the tenant-facing code and message for the failure sensor."""
    code = error_code(exc)
    return dg.Failure(
        description=description,
        metadata={ERROR_CODE_KEY: code, TENANT_ERROR_KEY: tenant_message(code, exc)},
        allow_retries=False,
    )


def canceled_failure(request_id: str) -> dg.Failure:
    """The run found its request canceled before a commit point: it stops, commits nothing, and is
    not retried (the cancel sensor empties the folder)."""
    return failure(ExportCanceled(f"request {request_id} was canceled"), "the export was canceled")


# Network ops ride over transient failures; invalid input is raised with allow_retries=False.
NETWORK_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def is_last_attempt(context: dg.OpExecutionContext) -> bool:
    return context.retry_number >= NETWORK_RETRY.max_retries


@contextlib.contextmanager
def explained_on_last_attempt(context: dg.OpExecutionContext) -> Iterator[None]:
    """On the op's last attempt, fail with what went wrong: Dagster's own message for exhausted
    retries is only "Exceeded max_retries", and that is what the request row would show."""
    try:
        yield
    except dg.Failure:
        raise
    except ExportCanceled as exc:  # the request was canceled: stop, never retry
        raise failure(exc, "the export was canceled") from exc
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
        # Dagster retries an interrupted op that has a retry policy (it may have been preempted);
        # a run being canceled (the API's cancel, the UI's terminate) must stop instead.
        run = context.instance.get_run_by_id(context.run_id)
        if run is None or run.status != dg.DagsterRunStatus.CANCELING:
            raise
        raise dg.Failure(
            description="the run was canceled",
            metadata={ERROR_CODE_KEY: "canceled", TENANT_ERROR_KEY: tenant_message("canceled")},
            allow_retries=False,
        ) from exc
    except Exception as exc:
        if not is_last_attempt(context):
            raise
        attempts = context.retry_number + 1
        raise failure(exc, f"{type(exc).__name__}: {str(exc).strip()} (after {attempts} attempts)") from exc
