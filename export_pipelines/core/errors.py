"""The project's one exception tree.

    ExportError                      anything the project raises on purpose
    ├── Rejected                     the input is wrong (a request field, a webhook target): never retried
    │   ├── InvalidRequest           a request field; `.field` names it, the message lists what is allowed
    │   └── InvalidWebhook           a notification target
    ├── ConfigurationError           the deployment is wrong (catalog, bucket, credentials): never retried
    │   ├── CatalogError             the catalog file itself
    │   └── S3ConfigurationError     S3 refused us for a reason retrying cannot fix
    └── TransientError               worth another attempt (the source or S3 briefly unavailable)

Callers catch the root or the one class they mean. `Rejected` also subclasses ValueError and
`ConfigurationError` RuntimeError, as the classes they replace did.
"""

from __future__ import annotations


class ExportError(Exception):
    """Root of every error the project raises on purpose."""

    code = "internal"  # the stable code tenants read (DESIGN §3.3)


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


class ConfigurationError(ExportError, RuntimeError):
    """The deployment is wrong (settings, catalog, bucket, credentials): fix it, then run again."""

    code = "internal"


class CatalogError(ConfigurationError):
    """The catalog file itself is invalid."""


class S3ConfigurationError(ConfigurationError):
    """S3 refused us for a reason retrying cannot fix (no bucket, access denied, bad key)."""

    code = "storage_unavailable"


class TransientError(ExportError):
    """Worth another attempt: a dependency was briefly unavailable."""

    code = "storage_unavailable"
