"""`export-pipelines serve --workers N` through the real server: the workers share the load.

With one listening socket shared by every worker, whichever worker was awake when connections
arrived accepted all of them, and keep-alive clients stay where they landed: 50 benchmark clients
connecting together kept one worker at 100 % of a core while the other idled. Each worker now has
a socket of its own on the port, and the kernel gives each new connection to one by its address."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from export_pipelines_tests.support.api_helpers import free_port, migrate_api

CONNECTIONS = 64


def test_connections_opened_together_are_spread_over_the_workers(stack_env, source_url, tmp_path):
    migrate_api(source_url)
    port = free_port()
    env = {
        **os.environ,
        **stack_env,
        "SOURCE_DATABASE_URL": source_url,
        "EXPORT_API_TOKEN_SECRET": "several-workers-test-secret-of-32-characters-at-least",
    }
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "export_pipelines.cli", "serve", "--port", str(port), "--workers", "2",
             "--metrics-port", "0"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        workers = _wait_for_workers(proc, port, log)
        # One worker busy (here: stopped) while a burst of connections arrives.
        os.kill(workers[0], signal.SIGSTOP)
        try:
            clients = _connect_together(port)
            time.sleep(0.5)  # the awake worker had every chance to take them all
        finally:
            os.kill(workers[0], signal.SIGCONT)
        try:
            for sock in clients:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            for sock in clients:
                assert sock.recv(4096).startswith(b"HTTP/1.1 200 "), "every connection is answered"
            held = {pid: _established(pid, port) for pid in workers}
        finally:
            for sock in clients:
                sock.close()
        assert sum(held.values()) == CONNECTIONS, held
        # Each worker serves the connections the kernel gave its own socket, by address: evenly would
        # be 32 and 32, fewer than 16 on one worker is a chance below 1 in 10,000.
        assert min(held.values()) >= 16, f"connections per worker: {held}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for_workers(proc: subprocess.Popen, port: int, log: Path) -> list[int]:
    """The worker processes, once both answer on the port."""
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"the API did not start: {log.read_text()}"
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True) if _listens(c.pid, port)]
        if len(children) == 2:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    time.sleep(1)  # both finished starting (each answers the health check itself)
                    return children
            except httpx.TransportError:
                pass
        time.sleep(0.3)


def _connect_together(port: int) -> list[socket.socket]:
    """CONNECTIONS connections started at the same moment, as a pool of keep-alive clients does."""
    clients = []
    for _ in range(CONNECTIONS):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        clients.append(sock)
    for sock in clients:
        select.select([], [sock], [], 10)
        sock.setblocking(True)
        sock.settimeout(10)
    return clients


def _connections(pid: int) -> list:
    try:
        return psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return []


def _listens(pid: int, port: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in _connections(pid))


def _established(pid: int, port: int) -> int:
    return sum(1 for c in _connections(pid) if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
