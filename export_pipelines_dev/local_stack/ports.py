"""Choosing the local stack's ports: away from ports other programs hold, saved in ``ports.json``."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from export_pipelines_dev.local_stack.paths import (
    DEFAULT_PG_PORT,
    DEFAULT_S3_PORT,
    Paths,
    Settings,
    StackError,
    note,
    saved_ports,
    weed_block,
    weed_block_fits,
)
from export_pipelines_dev.local_stack.postgres import pg_pid
from export_pipelines_dev.local_stack.procs import cmdline, port_free
from export_pipelines_dev.local_stack.seaweed import weed_pid

# How far `start` looks for free ports when a default/persisted one is taken.
_PG_PORT_TRIES = 200
_S3_BLOCK_TRIES = 100
# The next block starts right after this one (weed_block's ports span this many).
_S3_BLOCK_STEP = max(weed_block(DEFAULT_S3_PORT).values()) - DEFAULT_S3_PORT + 1


def _pg_own_port(p: Paths) -> int | None:
    """The port this state dir's running PostgreSQL listens on (line 4 of postmaster.pid)."""
    if pg_pid(p) is None:
        return None
    try:
        return int((p.pg_data / "postmaster.pid").read_text().split("\n")[3])
    except (OSError, ValueError, IndexError):
        return None


def _weed_own_ports(p: Paths) -> set[int]:
    """The ports this state dir's running weed holds (from its -s3.port argument)."""
    pid = weed_pid(p) if p.s3_dir.exists() else None
    if pid is None:
        return set()
    for arg in cmdline(pid):
        if arg.startswith("-s3.port="):
            with contextlib.suppress(ValueError):
                return set(weed_block(int(arg.split("=", 1)[1])).values())
    return set()


def free_pg_port(start: int, own: int | None, avoid: set[int], host: str = "127.0.0.1") -> int | None:
    """The first port from `start` on that is free (or already ours) and not in `avoid`."""
    for port in range(start, min(start + _PG_PORT_TRIES, 65536)):
        if port not in avoid and (port == own or port_free(port, host)):
            return port
    return None


def free_s3_base(start: int, own: set[int], avoid: set[int], host: str = "127.0.0.1") -> int | None:
    """The first S3 port from `start` on (in whole-block steps) whose weed block is all free."""
    for base in range(start, 65536, _S3_BLOCK_STEP)[:_S3_BLOCK_TRIES]:
        if not weed_block_fits(base):
            continue
        block = set(weed_block(base).values())
        if not block & avoid and all(port in own or port_free(port, host) for port in block):
            return base
    return None


def choose_ports(p: Paths, s: Settings) -> Settings:
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
        taken = sorted(port for port in s3_block if port not in weed_own and not port_free(port, s.host))
        if taken:
            raise StackError(
                f"{s.host}:{taken[0]} (weed, EXPORT_S3_PORT={s.s3_port}) is taken by another program; "
                "set EXPORT_S3_PORT to a free base (weed uses it, the next 12 ports and base-9992)"
            )
    pg_port = s.pg_port
    if s.pg_explicit:
        if pg_port != pg_own and not port_free(pg_port, s.host):
            raise StackError(
                f"{s.host}:{pg_port} is already taken by another program; set EXPORT_PG_PORT to a free port"
            )
        if s.s3_explicit and pg_port in s3_block:
            raise StackError(f"EXPORT_PG_PORT={pg_port} is one of weed's ports for EXPORT_S3_PORT")
    else:
        avoid = s3_block if s.s3_explicit else set()
        # A port saved by an older version may sit in the ephemeral range: look from the default too.
        found = free_pg_port(pg_port, pg_own, avoid, s.host) or free_pg_port(
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
        fits = weed_block_fits(s3_port)
        found = free_s3_base(s3_port if fits else DEFAULT_S3_PORT, weed_own, {pg_port}, s.host) or (
            free_s3_base(DEFAULT_S3_PORT, weed_own, {pg_port}, s.host)
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
        note(
            f"ports taken by other programs; moved {', '.join(moved)} "
            f"(saved in {p.ports}; EXPORT_PG_PORT / EXPORT_S3_PORT override)"
        )
    saved = saved_ports(p)
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
def ports_locked() -> Iterator[None]:
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
