"""Azurite (Microsoft's Azure Storage emulator, from npm) for the azure_blob destination's tests: its
Blob service on a free loopback port, data in a directory of its own.

`ensure_installed()` puts azurite (pinned) under `<checkout>/.local/azurite` with npm; a machine
without node gets Debian's nodejs from scripts/test_tools.sh. The emulator's account is its
documented development account."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

AZURITE_VERSION = "3.37.0"
ROOT = Path(__file__).resolve().parents[1] / ".local" / "azurite"
MAIN = ROOT / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
# Azurite's well-known development account (docs: "Use the Azurite emulator"), not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def available() -> bool:
    return shutil.which("node") is not None and (MAIN.is_file() or shutil.which("npm") is not None)


def ensure_installed() -> Path:
    if not MAIN.is_file():
        if shutil.which("npm") is None:
            raise RuntimeError("npm is missing: scripts/test_tools.sh installs Debian's nodejs and npm")
        ROOT.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", f"azurite@{AZURITE_VERSION}"],
            cwd=ROOT,
            check=True,
            timeout=900,
        )
    return MAIN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Azurite:
    directory: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @classmethod
    def start(cls, directory: Path, timeout: float = 60.0) -> Azurite:
        main = ensure_installed()
        directory.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        log = open(directory / "azurite.log", "ab")  # noqa: SIM115 - the server's lifetime
        process = subprocess.Popen(
            [
                "node",
                str(main),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--location",
                str(directory),
                "--skipApiVersionCheck",
                "--silent",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"azurite did not start; see {directory / 'azurite.log'}")
            time.sleep(0.2)
        return cls(directory, port, process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> Azurite:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
