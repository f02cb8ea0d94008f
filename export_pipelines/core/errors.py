"""The project's one exception tree.

    ExportError                      anything the project raises on purpose
    ├── Rejected                     the input is wrong (a request field, a webhook target): never retried
    │   ├── InvalidRequest           a request field; `.field` names it, the message lists what is allowed
    │   │   └── TooManyActive        the tenant already has its cap of active exports
    │   ├── InvalidWebhook           a notification target
    │   ├── RequestTooLarge          a request over the sizes the database accepts
    │   └── IdempotencyConflict      an idempotency key already used for another request
    ├── ConfigurationError           the deployment is wrong (catalog, bucket, credentials): never retried
    │   ├── CatalogError             the catalog file itself
    │   └── S3ConfigurationError     S3 refused us for a reason retrying cannot fix
    ├── DestinationError             a tenant's own destination refused or could not be reached
    │   ├── DestinationUnreachable   host unreachable, DNS, timeouts (code destination_unreachable)
    │   ├── DestinationDenied        wrong credentials, no permission (destination_denied)
    │   ├── DestinationNotFound      no bucket/container/folder, or the destination was deleted
    │   └── DestinationInvalid       the config is wrong, or names a host that is not allowed
    ├── DestinationInUse             a destination that feeds name is not deleted (an API answer, 409)
    └── TransientError               worth another attempt (the source or S3 briefly unavailable)
        ├── SourceTimeout            the source database cancelled a statement
        └── IdempotencyInFlight      the first request with this idempotency key is still being made

What a database refusal means (a SQLSTATE) is decided once, in core/storage/pg_errors.py; the API
only chooses the HTTP answer for each class.

Callers catch the root or the one class they mean. `Rejected` also subclasses ValueError and
`ConfigurationError` RuntimeError, as the classes they replace did.
"""

from __future__ import annotations


class ExportError(Exception):
    """Root of every error the project raises on purpose."""

    code = "internal"  # the stable code tenants read (docs/requests.md)


class Rejected(ExportError, ValueError):
    """The input is wrong: retrying the same input cannot help."""

    code = "invalid_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidRequest(Rejected):
    """A request field is invalid. `field` names it; the message lists what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field)


class InvalidWebhook(Rejected):
    """A webhook target that is not allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "webhook_url")


class TooManyActive(InvalidRequest):
    """The tenant already has as many active (pending, queued, running) exports as it may: worth
    trying again once one has finished. `reason` is the database's message without the field."""

    def __init__(self, reason: str) -> None:
        super().__init__("tenant_id", reason)
        self.reason = reason


class RequestTooLarge(Rejected):
    """A request over the sizes the database accepts (filters, columns, notify targets, tenant id)."""


class IdempotencyConflict(Rejected):
    """The idempotency key was used before, for another request of the tenant."""

    def __init__(self) -> None:
        super().__init__("Idempotency-Key: already used with a different request body", "Idempotency-Key")


class DeliveryInProgress(ExportError):
    """A feed already has a delivery pending, queued or running: one at a time (docs/feeds.md)."""

    def __init__(self, export_id: str) -> None:
        super().__init__(f"the feed's delivery {export_id} is still in progress; one delivery at a time")
        self.export_id = export_id


class ConfigurationError(ExportError, RuntimeError):
    """The deployment is wrong (settings, catalog, bucket, credentials): fix it, then run again."""

    code = "internal"


class CatalogError(ConfigurationError):
    """The catalog file itself is invalid."""


class S3ConfigurationError(ConfigurationError):
    """S3 refused us for a reason retrying cannot fix (no bucket, access denied, bad key)."""

    code = "storage_unavailable"


class DestinationError(ExportError):
    """A tenant's destination (its own bucket, container or SFTP server) failed us; the message says
    what the tenant can change. `result` is the answer of `POST /v1/destinations/{id}/test`."""

    code = "destination_invalid"
    result = "invalid"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DestinationUnreachable(DestinationError):
    code, result = "destination_unreachable", "unreachable"


class DestinationDenied(DestinationError):
    code, result = "destination_denied", "denied"


class DestinationNotFound(DestinationError):
    code, result = "destination_not_found", "not_found"


class DestinationInvalid(DestinationError):
    code, result = "destination_invalid", "invalid"


class DestinationInUse(ExportError):
    """A destination that feeds name cannot be deleted: point them elsewhere first (docs/feeds.md)."""

    code = "destination_in_use"

    def __init__(self, destination_id: str, feed_ids: list[str]) -> None:
        super().__init__(
            f"destination {destination_id} is used by feed(s) {', '.join(feed_ids)}; change their "
            "destination_id (PATCH /v1/feeds/{id}) or delete them first"
        )
        self.feed_ids = feed_ids


class TransientError(ExportError):
    """Worth another attempt: a dependency was briefly unavailable."""

    code = "storage_unavailable"


class SourceTimeout(TransientError):
    """The source database cancelled a statement (statement_timeout)."""

    code = "source_timeout"


class ExportCanceled(ExportError):
    """The export's row was canceled (the API's or the CLI's cancel) while a run worked on it: the
    run stops and commits nothing (no manifest, no `_SUCCESS`, no `succeeded`)."""

    code = "canceled"


class IdempotencyInFlight(TransientError):
    """The first request with this idempotency key is still being created: retry in a moment."""

    def __init__(self) -> None:
        super().__init__("a request with this Idempotency-Key is still being created; retry in a moment")
        self.field = "Idempotency-Key"


# What tenants read (the request row's `error_code` and `error`, the webhook's `error`): a short,
# stable message per code. The full error stays in the Dagster run (logs, step failure metadata).
ERROR_CODES = (
    "invalid_request",
    "source_timeout",
    "storage_unavailable",
    "canceled",
    "internal",
    "destination_unreachable",
    "destination_denied",
    "destination_not_found",
    "destination_invalid",
)
TENANT_MESSAGES = {
    "invalid_request": "the request is invalid",
    "source_timeout": "the export query took longer than allowed: narrow the filters or try again later",
    "storage_unavailable": "the file storage was unavailable: try again later",
    "canceled": "the export was canceled",
    "internal": "the export failed because of an internal error; the operators have the details",
    "destination_unreachable": "the destination could not be reached: check its host, port or "
    "endpoint and that it accepts connections, then try again",
    "destination_denied": "the destination refused the credentials: check the key or password and "
    "its permission to write, list and delete under the prefix",
    "destination_not_found": "the destination's bucket, container or folder does not exist, or the "
    "destination was deleted",
    "destination_invalid": "the destination's settings are invalid (see the destination's test)",
}
# Class names (of an exception or of one it was raised from) that say which code applies, for
# errors that only survive as names (a Dagster step failure's SerializableErrorInfo).
_CODE_BY_CLASS_NAME = {
    "QueryCanceled": "source_timeout",
    "ClientError": "storage_unavailable",
    "EndpointConnectionError": "storage_unavailable",
    "ConnectTimeoutError": "storage_unavailable",
    "ReadTimeoutError": "storage_unavailable",
    "ConnectionClosedError": "storage_unavailable",
    "NoCredentialsError": "storage_unavailable",
    "KeyTooLongError": "invalid_request",
}
_BOTOCORE_MODULE = "botocore."
_DESTINATION_CODES = {
    "DestinationUnreachable": "destination_unreachable",
    "DestinationDenied": "destination_denied",
    "DestinationNotFound": "destination_not_found",
    "DestinationInvalid": "destination_invalid",
    "DestinationError": "destination_invalid",
}
# A Rejected message names the field and what is allowed, written for tenants; still, no more
# than this much of it.
MAX_TENANT_MESSAGE_CHARS = 500


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def error_code(exc: BaseException) -> str:
    """The one place exceptions become the codes tenants read: an ExportError carries `.code`;
    psycopg's QueryCanceled is source_timeout; botocore's errors are storage_unavailable; anything
    else is internal. Causes count: a dg.Failure raised from a QueryCanceled is source_timeout."""
    for link in _chain(exc):
        if isinstance(link, ExportError):
            return link.code
        name = type(link).__name__
        if name in _CODE_BY_CLASS_NAME:
            return _CODE_BY_CLASS_NAME[name]
        if type(link).__module__.startswith(_BOTOCORE_MODULE):
            return "storage_unavailable"
    return "internal"


def error_code_of_class_names(names: list[str]) -> str:
    """error_code for an error known only by its class names (outermost first)."""
    for name in names:
        if name in _CODE_BY_CLASS_NAME:
            return _CODE_BY_CLASS_NAME[name]
        if name in ("InvalidRequest", "InvalidWebhook", "Rejected"):
            return "invalid_request"
        if name in ("TransientError", "S3ConfigurationError"):
            return "storage_unavailable"
        if name == "SourceTimeout":
            return "source_timeout"
        if name in _DESTINATION_CODES:
            return _DESTINATION_CODES[name]
    return "internal"


def tenant_message(code: str, exc: BaseException | None = None) -> str:
    """The short message for `code`. A Rejected's own message is kept (it names the field and what
    is allowed, and holds nothing but the tenant's own input); every other error is replaced."""
    if code not in TENANT_MESSAGES:
        code = "internal"
    if code == "invalid_request" and exc is not None:
        for link in _chain(exc):
            if isinstance(link, Rejected):
                return str(link)[:MAX_TENANT_MESSAGE_CHARS]
    if code.startswith("destination_") and exc is not None:
        # Written by the destination writers for the tenant: the field and what to fix, never a
        # credential nor an address the host resolved to.
        for link in _chain(exc):
            if isinstance(link, DestinationError):
                return f"{TENANT_MESSAGES[code]} ({str(link)[:MAX_TENANT_MESSAGE_CHARS]})"
    return TENANT_MESSAGES[code]
