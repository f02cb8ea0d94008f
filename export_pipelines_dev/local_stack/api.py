"""The local stack as a whole: start, stop, status, destroy, and the environment that points the
code at it."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from export_pipelines_dev.local_stack.paths import PG_USER, REGION, Settings, locked, paths, say
from export_pipelines_dev.local_stack.ports import choose_ports, ports_locked
from export_pipelines_dev.local_stack.postgres import ensure_pg, pg_pid, pg_stop
from export_pipelines_dev.local_stack.seaweed import ensure_s3, weed_pid, weed_stop


def dev_keys() -> dict[str, str]:
    """The development keys (manifest signing, destination credentials), made once per state dir and
    kept in `<state>/dev-keys.json` (0600): a restarted stack still verifies what it signed and
    decrypts what it stored."""
    from cryptography.fernet import Fernet

    from export_pipelines.core.engine.signing import generate_signing_key

    file = paths().root / "dev-keys.json"
    keys: dict[str, str] = json.loads(file.read_text()) if file.exists() else {}
    wanted = {
        "EXPORT_SIGNING_KEY": generate_signing_key,
        "EXPORT_SECRETS_KEY": lambda: Fernet.generate_key().decode(),
    }
    if any(name not in keys for name in wanted):
        for name, make in wanted.items():
            keys.setdefault(name, make())
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(keys, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(file)
    return {name: keys[name] for name in wanted}


def stack_env() -> dict[str, str]:
    """The variables (docs/configuration.md) that point the code at the local stack; starts nothing."""
    s = Settings.from_env()
    return {
        **dev_keys(),
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
    pg = pg_pid(p)
    weed = weed_pid(p) if p.s3_dir.exists() else None
    return [
        ServiceStatus("postgres", pg is not None, pg, f"{s.host}:{s.pg_port}", p.pg_data),
        ServiceStatus("s3", weed is not None, weed, s.s3_endpoint, p.s3_dir),
    ]


def start() -> dict[str, str]:
    """Make sure both services run and answer (idempotent); returns `stack_env()`."""
    began = time.monotonic()
    p = paths()
    with locked(p), ports_locked():
        s = choose_ports(p, Settings.from_env(p))
        pg_outcome = ensure_pg(p, s)
        s3_outcome = ensure_s3(p, s)
    for service in status():
        say(service.line())
    outcomes = f"postgres {pg_outcome}, s3 {s3_outcome}"
    say(f"ready in {time.monotonic() - began:.1f}s ({outcomes}); bucket '{s.bucket}'")
    return stack_env()


def stop() -> None:
    """Stop both services (no-op for what is not running)."""
    p = paths()
    with locked(p):
        weed_was = weed_stop(p) if p.s3_dir.exists() else False
        pg_was = pg_stop(p) if p.pg_dir.exists() else False
    say(f"s3: {'stopped' if weed_was else 'was not running'}")
    say(f"postgres: {'stopped' if pg_was else 'was not running'}")


def destroy() -> None:
    """Stop both services and delete all their data."""
    stop()
    root = paths().root
    shutil.rmtree(root, ignore_errors=True)
    say(f"deleted {root}")
