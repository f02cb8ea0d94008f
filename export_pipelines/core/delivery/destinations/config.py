"""What a destination is: its kind, its config and credentials checked field by field, and the host
it names checked by the webhook target rules (no loopback, link-local, private or metadata address
unless the deployment allows private ones) — when it is created, and again before every connect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from export_pipelines.core.delivery.webhook_target import Target, check_target
from export_pipelines.core.errors import DestinationInvalid, InvalidWebhook

KINDS = ("link", "s3", "azure_blob", "gcs", "sftp")
# Kinds with a writer (all of them); a kind added to KINDS before its writer is refused at creation.
WRITABLE_KINDS = KINDS

_CONFIG_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required, optional)
    "link": ((), ()),
    "s3": (("bucket",), ("prefix", "region", "endpoint_url", "role_arn", "external_id")),
    "azure_blob": (("account_url", "container"), ("prefix",)),
    "gcs": (("bucket",), ("prefix", "endpoint_url")),
    "sftp": (("host", "path", "host_key"), ("port",)),
}
_CREDENTIALS: dict[str, tuple[frozenset[str], ...]] = {
    # kind: the sets of credential fields allowed (exactly one of them)
    "link": (frozenset(),),
    "s3": (frozenset({"access_key_id", "secret_access_key"}), frozenset()),
    "azure_blob": (frozenset({"account_name", "account_key"}), frozenset({"sas_token"})),
    "gcs": (frozenset({"service_account_json"}), frozenset()),
    "sftp": (frozenset({"username", "private_key"}), frozenset({"username", "password"})),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_HOST_KEY = re.compile(r"(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/=]{40,}( .*)?")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")


@dataclass(frozen=True)
class Destination:
    """A stored destination; `credentials` is filled only where a writer needs them (never logged)."""

    id: str
    tenant_id: str
    kind: str
    name: str
    config: dict[str, Any]
    credentials_fingerprint: str = "none"
    credentials: dict[str, Any] = field(default_factory=dict, repr=False)
    deleted: bool = False

    @property
    def prefix(self) -> str:
        """The key prefix export folders go under (an SFTP destination's `path` is its root)."""
        return str(self.config.get("prefix") or "").strip("/")

    def public(self) -> dict[str, Any]:
        """What the API shows: never the credentials, a fingerprint instead."""
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "config": self.config,
            "credentials": {"fingerprint": self.credentials_fingerprint},
        }


def _invalid(field_name: str, message: str) -> DestinationInvalid:
    return DestinationInvalid(f"{field_name}: {message}", field_name)


def check_destination(
    kind: Any, name: Any, config: Any, credentials: Any, *, allow_private: bool = False
) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """The checked (kind, name, config, credentials); raises DestinationInvalid naming the field."""
    if kind not in KINDS:
        raise _invalid("kind", f"{kind!r} is not one of: {', '.join(KINDS)}")
    if kind not in WRITABLE_KINDS:
        raise _invalid("kind", f"{kind} has no writer in this version; allowed: {', '.join(WRITABLE_KINDS)}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _invalid("name", "1-100 characters of A-Z a-z 0-9 space . _ -, starting alphanumeric")
    config = {} if config is None else config
    credentials = {} if credentials is None else credentials
    if not isinstance(config, dict):
        raise _invalid("config", "must be an object")
    if not isinstance(credentials, dict):
        raise _invalid("credentials", "must be an object")
    required, optional = _CONFIG_FIELDS[kind]
    for key in config:
        if key not in required + optional:
            raise _invalid(f"config.{key}", f"unknown; allowed for {kind}: {', '.join(required + optional)}")
    for key in required:
        if config.get(key) in (None, ""):
            raise _invalid(f"config.{key}", f"required for {kind}")
    for key, value in config.items():
        if key != "port" and not isinstance(value, str):
            raise _invalid(f"config.{key}", "must be a string")
    allowed = _CREDENTIALS[kind]
    given = frozenset(k for k, v in credentials.items() if v not in (None, ""))
    if given not in allowed:
        choices = " or ".join("{" + ", ".join(sorted(s)) + "}" if s else "none" for s in allowed)
        raise _invalid("credentials", f"for {kind}: {choices}")
    for key in given:
        if not isinstance(credentials[key], str):
            raise _invalid(f"credentials.{key}", "must be a string")
    clean_credentials = {k: credentials[k] for k in given}
    if kind == "s3":
        _check_s3(config, given)
    elif kind == "sftp":
        _check_sftp(config)
    elif kind == "azure_blob" and not re.fullmatch(
        r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", config["container"]
    ):
        raise _invalid("config.container", "3-63 characters of a-z 0-9 -, starting and ending alphanumeric")
    for key in ("prefix", "path"):
        if key in config:
            value = config[key].strip("/")
            if any(part in ("", ".", "..") for part in value.split("/")) and value:
                raise _invalid(f"config.{key}", "no empty, '.' or '..' segments")
    checked = dict(config)
    check_host(kind, checked, allow_private=allow_private)
    if kind == "gcs" and "service_account_json" in clean_credentials:
        from export_pipelines.core.delivery.destinations.gcs import service_account_info

        service_account_info(clean_credentials["service_account_json"], allow_private=allow_private)
    return kind, name, checked, clean_credentials


def _check_s3(config: dict[str, Any], given: frozenset[str]) -> None:
    if not _BUCKET.fullmatch(config["bucket"]):
        raise _invalid("config.bucket", "3-63 characters of a-z 0-9 . -, starting and ending alphanumeric")
    role, external = config.get("role_arn"), config.get("external_id")
    if role is not None and not _ROLE_ARN.fullmatch(role):
        raise _invalid("config.role_arn", "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
    if role is not None and not external:
        raise _invalid("config.external_id", "required with role_arn (the role's trust policy checks it)")
    if external is not None and role is None:
        raise _invalid("config.role_arn", "required with external_id")
    if not given and role is None:
        raise _invalid("credentials", "for s3: {access_key_id, secret_access_key}, or none with role_arn")


def _check_sftp(config: dict[str, Any]) -> None:
    port = config.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise _invalid("config.port", "a whole number 1..65535 (default 22)")
    if not _HOST_KEY.fullmatch(config["host_key"].strip()):
        raise _invalid(
            "config.host_key",
            "the server's public key line, e.g. `ssh-ed25519 AAAA…` (ssh-keyscan -t ed25519 HOST)",
        )
    if not config["path"].startswith("/"):
        raise _invalid("config.path", "an absolute path on the server, e.g. /upload/exports")


def endpoint_url(kind: str, config: dict[str, Any]) -> tuple[str, str] | None:
    """(field, URL) of the host a destination connects to; None for a cloud's own endpoint."""
    if kind == "sftp":
        return "config.host", f"https://{_bracket(config['host'])}:{config.get('port', 22)}/"
    if kind == "azure_blob":
        return "config.account_url", config["account_url"]
    if kind in ("s3", "gcs") and config.get("endpoint_url"):
        return "config.endpoint_url", config["endpoint_url"]
    return None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def check_host(kind: str, config: dict[str, Any], *, allow_private: bool = False) -> Target | None:
    """The webhook target rules for the host a destination names: at creation and before every
    connect (the host may resolve elsewhere by then). Returns the checked target (its addresses)."""
    named = endpoint_url(kind, config)
    if named is None:
        return None
    field_name, url = named
    try:
        return check_target(url, allow_private=allow_private)
    except InvalidWebhook as exc:
        detail = str(exc).split(": ", 1)[-1]
        raise _invalid(field_name, detail.replace("webhook_url", field_name)) from None
