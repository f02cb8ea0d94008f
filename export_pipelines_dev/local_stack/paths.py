"""The local stack's settings, state directory and files: ports from the environment or
``ports.json``, where data and logs live, the PostgreSQL OS user, and the files the servers read."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import ipaddress
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# World-writable, survives reboots on most systems, and is traversable by `nobody`.
SHARED_TMP = Path("/var/tmp/export-pipelines")
PG_USER = "postgres"
PG_DATABASES = ("exports", "dagster")
REGION = "us-east-1"
# PostgreSQL refuses to run as root; as root we drop to this account for the server binaries.
PG_OS_USER = "nobody"


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says what to look at."""


DEFAULT_PG_PORT = 25432
DEFAULT_S3_PORT = 28333
# weed's ports relative to its S3 port (P): P+1..P+12 and P-9992 (see `weed_block`).
_WEED_OFFSETS = {
    "master.port": 1,
    "master.port.grpc": 2,
    "volume.port": 3,
    "volume.port.grpc": 4,
    "filer.port": 5,
    "filer.port.grpc": 6,
    "s3.port.grpc": 7,
    "admin.port.grpc": 8,
    "admin.port": 8 - 10000,
    "webdav.port": 9,
    "debug.port": 10,
    "s3.debug.port": 11,
    "metricsPort": 12,
}


def weed_block(s3_port: int) -> dict[str, int]:
    """Every SeaweedFS port for S3 port P: P itself, P+1..P+12 and P-9992.

    All are set explicitly: weed's defaults (8888, 9333, 9340, 6060, 23646, ...) are popular
    with other software, and an unset gRPC port is "http port + 10000", which for a 58xxx
    port is not even a valid port number. The admin server is the exception that proves the
    rule: weed's maintenance worker dials "admin http port + 10000" whatever
    -admin.port.grpc says, so the admin HTTP port sits 10000 below its gRPC port.
    """
    return {"s3.port": s3_port, **{name: s3_port + delta for name, delta in _WEED_OFFSETS.items()}}


def weed_block_fits(s3_port: int) -> bool:
    ports = weed_block(s3_port).values()
    return max(ports) <= 65535 and min(ports) >= 1024


@dataclass(frozen=True)
class Settings:
    """Everything configurable, read from the environment (and ``ports.json``) on each call.

    Ports: EXPORT_PG_PORT / EXPORT_S3_PORT when set (`*_explicit`), else what `start` saved in
    ``<state>/ports.json`` (it moves away from ports other programs hold), else the defaults.
    """

    pg_port: int
    s3_port: int
    access_key: str
    secret_key: str
    bucket: str
    prefix: str
    pg_explicit: bool = False
    s3_explicit: bool = False
    host: str = "127.0.0.1"  # EXPORT_STACK_HOST: the one address both servers listen on

    @classmethod
    def from_env(cls, p: Paths | None = None) -> Settings:
        pg_port = _env_port("EXPORT_PG_PORT")
        s3_port = _env_port("EXPORT_S3_PORT")
        saved = saved_ports(p or paths()) if pg_port is None or s3_port is None else {}
        return cls(
            pg_port=pg_port or saved.get("pg_port") or DEFAULT_PG_PORT,
            s3_port=s3_port or saved.get("s3_port") or DEFAULT_S3_PORT,
            access_key=os.environ.get("EXPORT_S3_ACCESS_KEY") or "exportdev",
            secret_key=os.environ.get("EXPORT_S3_SECRET_KEY") or "exportdev-secret-key",
            bucket=os.environ.get("EXPORT_BUCKET") or "exports",
            prefix=os.environ.get("EXPORT_PREFIX") or "exports",
            pg_explicit=pg_port is not None,
            s3_explicit=s3_port is not None,
            host=_env_host(),
        )

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    def weed_ports(self) -> dict[str, int]:
        """weed's ports besides the S3 one (see `weed_block`)."""
        if not weed_block_fits(self.s3_port):
            base = self.s3_port
            raise StackError(
                f"EXPORT_S3_PORT={base} does not fit: weed needs {base - 9992} and {base}..{base + 12}"
            )
        ports = weed_block(self.s3_port)
        del ports["s3.port"]
        return ports


def _env_host() -> str:
    raw = os.environ.get("EXPORT_STACK_HOST") or "127.0.0.1"
    try:
        address = ipaddress.IPv4Address(raw)
    except ValueError:
        raise StackError(f"EXPORT_STACK_HOST={raw!r} is not an IPv4 address of this machine") from None
    return str(address)


def _env_port(name: str) -> int | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 1024 <= port <= 65535:
        raise StackError(f"{name}={port} is outside 1024..65535")
    return port


def saved_ports(p: Paths) -> dict[str, int]:
    """The ports `start` chose for this state dir (empty when none were saved)."""
    try:
        raw = json.loads(p.ports.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        note(f"ignoring unreadable {p.ports} ({exc})")
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        key: value
        for key, value in raw.items()
        if key in ("pg_port", "s3_port") and type(value) is int and 1024 <= value <= 65535
    }


@dataclass(frozen=True)
class Paths:
    """Layout of the state directory."""

    root: Path

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def ports(self) -> Path:
        return self.root / "ports.json"

    @property
    def pg_dir(self) -> Path:
        return self.root / "pg"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def pg_run(self) -> Path:
        return self.pg_dir / "run"

    @property
    def pg_log(self) -> Path:
        return self.pg_dir / "postgres.log"

    @property
    def s3_dir(self) -> Path:
        return self.root / "s3"

    @property
    def s3_log(self) -> Path:
        return self.s3_dir / "weed.log"

    @property
    def s3_pid(self) -> Path:
        return self.s3_dir / "weed.pid"

    @property
    def s3_creds(self) -> Path:
        return self.s3_dir / "creds.json"

    @property
    def s3_kek(self) -> Path:
        return self.s3_dir / "sse_kek"


def is_root() -> bool:
    return os.geteuid() == 0


def note(message: str) -> None:
    """Side remarks go to stderr so that `env` output stays eval-able."""
    print(f"local_stack: {message}", file=sys.stderr)


def say(message: str) -> None:
    print(message, flush=True)


@functools.cache
def as_pg_user_prefix() -> tuple[str, ...]:
    """Command prefix that runs a program as the PostgreSQL OS user (empty when not root)."""
    if not is_root():
        return ()
    try:
        account = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise StackError(f"running as root needs a '{PG_OS_USER}' account for PostgreSQL") from None
    setpriv = shutil.which("setpriv")
    if setpriv:
        # Numeric ids: the group is `nogroup` on Debian but `nobody` elsewhere.
        return (setpriv, f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups")
    runuser = shutil.which("runuser")
    if runuser:
        return (runuser, "-u", PG_OS_USER, "--")
    raise StackError("running as root needs setpriv or runuser to start PostgreSQL as 'nobody'")


def _pg_user_can(*test_args: str) -> bool:
    """`test ARGS` as the PostgreSQL OS user: can it reach/execute a path?"""
    if not is_root():
        return True
    result = subprocess.run(
        [*as_pg_user_prefix(), "test", *test_args], cwd="/", capture_output=True, check=False
    )
    return result.returncode == 0


def mkdirs(path: Path, mode: int = 0o755) -> None:
    """mkdir -p that sets `mode` on what it creates, whatever the umask (nobody must traverse)."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
            os.chmod(directory, mode)


@functools.cache
def _state_dir_for(preferred: Path) -> Path:
    if not is_root():
        return preferred
    mkdirs(preferred)
    if _pg_user_can("-x", str(preferred)):
        return preferred
    # E.g. a checkout under /root (0700): nobody cannot reach a data directory in there.
    # One fallback per preferred dir (the default one keeps its historical name), so that an
    # EXPORT_STACK_DIR stack never shares, or destroys, the checkout's own state.
    default = PROJECT_ROOT / ".local" / "stack"
    key = PROJECT_ROOT if preferred == default else preferred
    digest = hashlib.sha1(str(key).encode()).hexdigest()[:10]
    fallback = SHARED_TMP / digest
    mkdirs(fallback)
    os.chmod(SHARED_TMP, 0o755)
    os.chmod(fallback, 0o755)
    note(f"{preferred} is not reachable by '{PG_OS_USER}'; keeping state in {fallback}")
    return fallback


def state_dir() -> Path:
    """Where data, logs and pid files live (created on first use)."""
    override = os.environ.get("EXPORT_STACK_DIR")
    if override:
        preferred = Path(override).resolve()
    elif (PROJECT_ROOT / "pyproject.toml").exists():
        preferred = PROJECT_ROOT / ".local" / "stack"
    else:  # installed as a wheel: there is no checkout to keep state in
        preferred = Path.home() / ".local" / "state" / "export-pipelines" / "stack"
    return _state_dir_for(preferred)


def paths() -> Paths:
    return Paths(state_dir())


@contextlib.contextmanager
def locked(p: Paths) -> Iterator[None]:
    """Serialise start/stop across processes (parallel test sessions, a shell and an IDE...)."""
    mkdirs(p.root)
    with open(p.lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def chown_to_pg_user(path: Path) -> None:
    if is_root():
        account = pwd.getpwnam(PG_OS_USER)
        os.chown(path, account.pw_uid, account.pw_gid)


def write_private(path: Path, text: str, for_pg: bool = False) -> bool:
    """Write a 0600 file atomically (owned by the PostgreSQL user when `for_pg`); returns whether
    the content changed."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    if for_pg:
        chown_to_pg_user(tmp)
    tmp.replace(path)
    return True
