"""Presigned download links: bounded by what the signing credentials allow, and only for objects of
the export's own folder (docs/operations.md, docs/security.md).

A SigV4 presigned URL stops working when its `X-Amz-Expires` runs out (at most 7 days) *or* when the
credentials that signed it expire, whichever comes first. With temporary credentials (an assumed
role, instance/container credentials, SSO) a 24 h link signed by credentials that expire in 1 h dies
after 1 h. So `link_expiry` shortens the link to what the credentials allow, and `presign_link`
returns the expiry the URL really has, for callers to store and promise (`expires_at`).

`fresh_links` is what `export-pipelines relink` (and the HTTP API) use: the keys come from the
export's location and the manifest read from that folder, never from a row column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import ClientError

from export_pipelines.core.errors import ConfigurationError, Rejected
from export_pipelines.core.storage.layout import (
    MANIFEST_NAME,
    SIGNATURE_SUFFIX,
    ExportLocation,
    attachment,
    download_name,
    file_extension,
)
from export_pipelines.core.storage.s3 import explain

# SigV4 presigned URLs live at most 7 days (S3 refuses a longer X-Amz-Expires).
MAX_LINK_EXPIRY = timedelta(days=7)
# Temporary credentials whose expiry botocore does not know (AWS_SESSION_TOKEN from the environment,
# a static session token): the longest an AWS role session can last (IAM MaxSessionDuration is
# 1-12 h), unless the deployment says otherwise (`unknown_session_lifetime`).
DEFAULT_UNKNOWN_SESSION_LIFETIME = timedelta(hours=12)
# A link shorter than this is no use to a customer; refuse instead of promising it.
MIN_LINK_EXPIRY = timedelta(minutes=1)


@dataclass(frozen=True)
class SignedUrl:
    url: str
    expires_at: datetime  # when the URL stops working (X-Amz-Date + X-Amz-Expires)


@dataclass(frozen=True)
class Link:
    """One fresh link of an export: a file (number from 1, manifest order) or the manifest (0)."""

    number: int
    key: str
    filename: str
    url: str
    expires_at: datetime
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None


def signing_credentials(client: Any) -> Any:
    """The credentials object the client signs with (None: unsigned)."""
    # botocore has no public accessor; `_get_credentials` is the one it documents as private.
    getter = getattr(client, "_get_credentials", None)
    if callable(getter):
        return getter()
    signer = getattr(client, "_request_signer", None)
    return getattr(signer, "_credentials", None)


def credentials_remaining(
    credentials: Any, now: datetime, unknown_session_lifetime: timedelta
) -> timedelta | None:
    """How long the credentials stay valid from `now`; None when they do not expire (long-term
    keys). Refreshable credentials are refreshed first if botocore would refresh them anyway."""
    if credentials is None:
        return None
    expiry = getattr(credentials, "_expiry_time", None)
    if expiry is not None or hasattr(credentials, "refresh_needed"):
        # Refreshable (assume-role, IMDS, container, SSO): get_frozen_credentials refreshes them when
        # they are inside botocore's refresh window, so the expiry read next is the one used to sign.
        try:
            credentials.get_frozen_credentials()
        except Exception as exc:  # botocore raises RuntimeError or its own refresh errors
            raise ConfigurationError(
                "the S3 signing credentials expire now and could not be refreshed "
                f"({type(exc).__name__}); no link can be signed: check the role or AWS_SESSION_TOKEN"
            ) from exc
        expiry = getattr(credentials, "_expiry_time", None)
        if expiry is not None:
            if expiry.tzinfo is None:
                expiry = expiry.replace(tzinfo=UTC)
            return expiry - now
        return unknown_session_lifetime
    if getattr(credentials, "token", None):
        return unknown_session_lifetime  # a session token whose expiry nobody told us
    return None


def link_expiry(
    client: Any,
    requested: timedelta,
    *,
    unknown_session_lifetime: timedelta = DEFAULT_UNKNOWN_SESSION_LIFETIME,
    now: datetime | None = None,
) -> timedelta:
    """min(requested, 7 days, the signing credentials' remaining lifetime), in whole seconds.

    Raises ConfigurationError when the credentials are (nearly) expired: a link that dies at once
    helps nobody, and the cause is the deployment's."""
    now = now or datetime.now(UTC)
    bound = min(requested, MAX_LINK_EXPIRY)
    remaining = credentials_remaining(signing_credentials(client), now, unknown_session_lifetime)
    if remaining is not None:
        bound = min(bound, remaining)
    bound = timedelta(seconds=int(bound.total_seconds()))
    if bound < MIN_LINK_EXPIRY:
        raise ConfigurationError(
            f"the S3 signing credentials expire in {max(remaining or bound, timedelta(0))}: no link can "
            f"last the minimum of {MIN_LINK_EXPIRY}; refresh the credentials (AWS_SESSION_TOKEN / role)"
        )
    return bound


def _url_expiry(url: str) -> datetime:
    query = parse_qs(urlsplit(url).query)
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return signed_at + timedelta(seconds=int(query["X-Amz-Expires"][0]))


def presign_link(
    client: Any,
    bucket: str,
    key: str,
    filename: str,
    expiry: timedelta,
    *,
    unknown_session_lifetime: timedelta = DEFAULT_UNKNOWN_SESSION_LIFETIME,
) -> SignedUrl:
    """A presigned GET of `key` saved as `filename`, and when it really expires (≤ `expiry`)."""
    seconds = int(
        link_expiry(client, expiry, unknown_session_lifetime=unknown_session_lifetime).total_seconds()
    )
    url = client.generate_presigned_url(
        "get_object",
        Params={"Bucket": bucket, "Key": key, "ResponseContentDisposition": attachment(filename)},
        ExpiresIn=seconds,
    )
    try:
        expires_at = _url_expiry(url)
    except (KeyError, ValueError):  # not SigV4 query auth: fall back to the clock
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)
    return SignedUrl(url, expires_at)


def presign(client: Any, bucket: str, key: str, filename: str, expiry: timedelta) -> str:
    """`presign_link`'s URL: a presigned GET whose life is bounded by `link_expiry`."""
    return presign_link(client, bucket, key, filename, expiry).url


def read_manifest(client: Any, bucket: str, location: ExportLocation) -> dict[str, Any]:
    """The manifest of a complete export, read from the location's own folder; Rejected when the
    export is not complete (no _SUCCESS) or the manifest names another export."""
    return json.loads(read_manifest_bytes(client, bucket, location))


def read_manifest_bytes(client: Any, bucket: str, location: ExportLocation) -> bytes:
    """`read_manifest`'s checks, and the manifest's exact bytes: what its signature covers."""
    try:
        client.head_object(Bucket=bucket, Key=location.success_key)
        body = client.get_object(Bucket=bucket, Key=location.manifest_key)["Body"].read()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            raise Rejected(
                f"export {location.export_id}: its files are gone or incomplete (no _SUCCESS/manifest "
                f"in {location.folder})",
                "export_id",
            ) from exc
        raise explain(exc, bucket, location.folder) from exc
    manifest = json.loads(body)
    named = (manifest.get("tenant_id"), manifest.get("resource"), manifest.get("export_id"))
    if named != (location.tenant_id, location.resource, location.export_id):
        raise Rejected(f"export {location.export_id}: its manifest names another export", "export_id")
    return body


def read_manifest_signature(client: Any, bucket: str, location: ExportLocation) -> bytes | None:
    """The manifest's signature (base64 text) beside it; None for an unsigned manifest."""
    try:
        return client.get_object(Bucket=bucket, Key=location.manifest_key + SIGNATURE_SUFFIX)["Body"].read()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise explain(exc, bucket, location.folder) from exc


def fresh_links(
    client: Any,
    bucket: str,
    location: ExportLocation,
    hours: float,
    *,
    unknown_session_lifetime: timedelta = DEFAULT_UNKNOWN_SESSION_LIFETIME,
) -> list[Link]:
    """New links for a complete export: number 0 is the manifest, then each file (from 1) under
    the download name `finalize` gives it. Every key must be the location's own (Rejected if not)."""
    return fresh_link_page(
        client, bucket, location, hours, unknown_session_lifetime=unknown_session_lifetime
    )[0]


def fresh_link_page(
    client: Any,
    bucket: str,
    location: ExportLocation,
    hours: float,
    *,
    first: int = 1,
    limit: int | None = None,
    unknown_session_lifetime: timedelta = DEFAULT_UNKNOWN_SESSION_LIFETIME,
) -> tuple[list[Link], int]:
    """`fresh_links` for files `first` … `first + limit - 1` only (the manifest's link always), and
    how many files the export has: an export of 10,000 files is signed a page at a time."""
    manifest = read_manifest(client, bucket, location)
    entries = manifest.get("files", [])
    expiry = link_expiry(client, timedelta(hours=hours), unknown_session_lifetime=unknown_session_lifetime)
    signed = presign_link(client, bucket, location.manifest_key, MANIFEST_NAME, expiry)
    links = [Link(0, location.manifest_key, MANIFEST_NAME, signed.url, signed.expires_at)]
    last = len(entries) if limit is None else min(len(entries), first - 1 + limit)
    for number in range(max(1, first), last + 1):
        entry = entries[number - 1]
        key = location.require_own(entry.get("key"))
        filename = download_name(location, number, file_extension(key))
        signed = presign_link(client, bucket, key, filename, expiry)
        links.append(
            Link(
                number,
                key,
                filename,
                signed.url,
                signed.expires_at,
                entry.get("rows"),
                entry.get("bytes"),
                entry.get("sha256"),
            )
        )
    return links, len(entries)


def download_link(links: list[Link]) -> Link:
    """The link a request row shows (`download_url`): the one file, else the manifest."""
    files = [link for link in links if link.number > 0]
    return files[0] if len(files) == 1 else links[0]
