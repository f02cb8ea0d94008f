"""An OpenSSH SFTP server for the sftp destination's tests: Debian's `/usr/sbin/sshd`
(openssh-server, installed by scripts/test_tools.sh) on a free loopback port, with its own host key,
config and authorized key in a directory of its own — never the system's service or keys.

    with SftpServer.start(tmp_dir) as server:
        server.port, server.host_key_line, server.client_key_pem, server.username, server.root
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

SSHD = "/usr/sbin/sshd"


def available() -> bool:
    return Path(SSHD).is_file() and shutil.which("ssh-keygen") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "export-pipelines-test", "-f", str(path)],
        check=True,
    )


@dataclass
class SftpServer:
    directory: Path
    port: int
    username: str
    process: subprocess.Popen[bytes]

    @property
    def root(self) -> Path:
        """A folder the test user may write in: what a destination's `path` names."""
        return self.directory / "files"

    @property
    def host_key_line(self) -> str:
        kind, data = (self.directory / "host_ed25519.pub").read_text().split()[:2]
        return f"{kind} {data}"

    @property
    def client_key_pem(self) -> str:
        return (self.directory / "client_ed25519").read_text()

    @classmethod
    def start(cls, directory: Path, timeout: float = 30.0) -> SftpServer:
        if not available():
            raise RuntimeError(f"{SSHD} is missing: run scripts/test_tools.sh (Debian's openssh-server)")
        directory.mkdir(parents=True, exist_ok=True)
        _keygen(directory / "host_ed25519")
        _keygen(directory / "client_ed25519")
        keys = directory / "authorized_keys"
        keys.mkdir(exist_ok=True)
        username = getpass.getuser()
        (keys / username).write_text((directory / "client_ed25519.pub").read_text())
        (directory / "files").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            # sshd running as root wants its privilege-separation directory (the service makes it).
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        port = _free_port()
        config = directory / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {directory / 'host_ed25519'}",
                    f"PidFile {directory / 'sshd.pid'}",
                    f"AuthorizedKeysFile {keys}/%u",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    f"AllowUsers {username}",
                    "Subsystem sftp internal-sftp",
                    "ForceCommand internal-sftp",
                    "AllowTcpForwarding no",
                    "X11Forwarding no",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        log = open(directory / "sshd.log", "ab")  # noqa: SIM115 - the server's lifetime
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"sshd did not start; see {directory / 'sshd.log'}")
            time.sleep(0.1)
        return cls(directory, port, username, process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> SftpServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
