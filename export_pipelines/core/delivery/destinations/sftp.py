"""An `sftp` destination (paramiko): the host checked by the webhook target rules and then connected
to at the checked address, its host key pinned (the config's `host_key` line, nothing learnt on
first use), password or key authentication. Files are written as `<name>.partial` and renamed when
complete, so a reader never sees half a file under its final name."""

from __future__ import annotations

import base64
import io
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko

from export_pipelines.core.delivery.destinations.config import Destination, check_host
from export_pipelines.core.errors import (
    DestinationDenied,
    DestinationError,
    DestinationInvalid,
    DestinationNotFound,
    DestinationUnreachable,
)

CONNECT_TIMEOUT_SECONDS = 15
PARTIAL_SUFFIX = ".partial"


def _pinned_key(line: str) -> paramiko.PKey:
    kind, data = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


def _private_key(text: str) -> paramiko.PKey:
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise DestinationInvalid("credentials.private_key: not an OpenSSH private key (ed25519, ecdsa or rsa)")


def sftp_error(exc: BaseException, destination: Destination) -> DestinationError:
    path = destination.config.get("path")
    if isinstance(exc, DestinationError):
        return exc
    if isinstance(exc, paramiko.AuthenticationException):
        return DestinationDenied("credentials: the SFTP server refused the user name and key or password")
    if isinstance(exc, FileNotFoundError):
        return DestinationNotFound(f"config.path: {path!r} does not exist on the server", "config.path")
    if isinstance(exc, PermissionError):
        return DestinationDenied(f"config.path: the user may not write in {path!r}", "config.path")
    if isinstance(
        exc, socket.timeout | TimeoutError | ConnectionError | socket.gaierror | OSError | EOFError
    ):
        return DestinationUnreachable(
            "config.host: the SFTP server could not be reached (check host, port and firewall)", "config.host"
        )
    if isinstance(exc, paramiko.SSHException):
        return DestinationUnreachable(f"config.host: SSH failed ({exc})", "config.host")
    return DestinationInvalid(type(exc).__name__)


@contextmanager
def connect(destination: Destination, *, allow_private: bool = False) -> Iterator[paramiko.SFTPClient]:
    """An SFTP session at the checked address, the host key compared with the pinned one before
    any credential is sent."""
    config, creds = destination.config, destination.credentials
    target = check_host("sftp", config, allow_private=allow_private)
    assert target is not None
    port = int(config.get("port", 22))
    pinned = _pinned_key(config["host_key"])
    sock = None
    for address in target.addresses:
        try:
            sock = socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_SECONDS)
            break
        except OSError:
            continue
    if sock is None:
        raise DestinationUnreachable(
            "config.host: the SFTP server could not be reached (check host, port and firewall)", "config.host"
        )
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = CONNECT_TIMEOUT_SECONDS
        transport.start_client(timeout=CONNECT_TIMEOUT_SECONDS)
        offered = transport.get_remote_server_key()
        if offered.get_name() != pinned.get_name() or offered.asbytes() != pinned.asbytes():
            raise DestinationInvalid(
                "config.host_key: the server's host key differs from the pinned one (a changed or "
                "impersonated server); update host_key only if you changed the server's key",
                "config.host_key",
            )
        username = creds.get("username", "")
        if "private_key" in creds:
            transport.auth_publickey(username, _private_key(creds["private_key"]))
        else:
            transport.auth_password(username, creds.get("password", ""))
        client = paramiko.SFTPClient.from_transport(transport)
        if client is None:
            raise DestinationUnreachable("config.host: the server offers no SFTP subsystem", "config.host")
        yield client
    finally:
        transport.close()


def ensure_folder(client: paramiko.SFTPClient, base: str, relative: str) -> str:
    """`base` must exist (the tenant made it); the folders below it are made as needed."""
    client.stat(base)
    path = base.rstrip("/")
    for part in [p for p in relative.split("/") if p]:
        path = f"{path}/{part}"
        try:
            client.stat(path)
        except FileNotFoundError:
            client.mkdir(path)
    return path


def probe(destination: Destination, *, allow_private: bool = False) -> None:
    """Write, read back and delete a probe file in `path`; raises DestinationError."""
    body = b"export-pipelines destination test\n"
    base = destination.config["path"].rstrip("/") or "/"
    name = f"{base}/.export-pipelines-probe-{uuid.uuid4().hex}"
    try:
        with connect(destination, allow_private=allow_private) as client:
            client.stat(base)
            with client.open(name, "wb") as fh:
                fh.write(body)
            try:
                with client.open(name, "rb") as fh:
                    read = fh.read()
            finally:
                client.remove(name)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the tenant's answer
        raise sftp_error(exc, destination) from None
    if read != body:
        raise DestinationInvalid("the probe file read back differs from what was written")


def put_bytes(client: paramiko.SFTPClient, path: str, data: bytes) -> None:
    """A small file (manifest, signature, _SUCCESS): `.partial`, then renamed over the final name."""
    partial = path + PARTIAL_SUFFIX
    with client.open(partial, "wb") as fh:
        fh.write(data)
    client.posix_rename(partial, path)


def remote_size(client: paramiko.SFTPClient, path: str) -> int | None:
    try:
        return int(client.stat(path).st_size or 0)
    except FileNotFoundError:
        return None
