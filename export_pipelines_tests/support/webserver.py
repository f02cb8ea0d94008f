"""A real `dagster-webserver` on the daemon's instance (support/daemon.py), and its GraphQL API: what the
UI's launchpad and run page read."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from export_pipelines_tests.support.api_helpers import free_port
from export_pipelines_tests.support.daemon import ROOT

LOCATION = "export_pipelines"  # workspace.yaml
REPOSITORY = "__repository__"  # the name Dagster gives a Definitions object's repository


@dataclass
class Webserver:
    url: str

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        answer = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=120)
        answer.raise_for_status()
        body = answer.json()
        assert "errors" not in body, body
        return body["data"]

    @staticmethod
    def selector(job: str) -> dict[str, str]:
        return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "pipelineName": job}


@contextlib.contextmanager
def running_webserver(env: dict[str, str], home: Path) -> Iterator[Webserver]:
    """dagster-webserver on a free port with `env` (the daemon's), until its code location is loaded."""
    port = free_port()
    log = open(home / "webserver.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            *("-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Webserver(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (
                f"dagster-webserver exited: {(home / 'webserver.log').read_text()[-3000:]}"
            )
            with contextlib.suppress(httpx.HTTPError):
                data = server.graphql(
                    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
                )
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    break
            assert time.monotonic() < deadline, "dagster-webserver did not load the code location in 240 s"
            time.sleep(1)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
