"""Process and port helpers of the local stack: is a pid alive, is a port free, log tails."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
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


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Could a server listen on host:port now? (Nobody answers there and we can bind it.)"""
    if port_in_use(port, host):
        return False
    # weed checks a port by binding it on every address: one another stack holds on 127.0.0.1
    # is taken for a stack on another address too.
    if host != "127.0.0.1" and not port_free(port):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a TIME_WAIT leftover does not make a port taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def rotate(log: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
    """Keep one previous log: these servers log forever otherwise."""
    with contextlib.suppress(OSError):
        if log.stat().st_size > max_bytes:
            log.replace(log.with_name(log.name + ".1"))
