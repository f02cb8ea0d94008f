"""Latency of the export API under concurrent clients, and the cost of many open SSE streams.

    source scripts/env.sh   # or: eval "$(python -m export_pipelines_dev.local_stack env)"
    python bench/api_latency.py [--clients 50] [--requests 1000] [--streams 100] [--stream-seconds 20]
                                [--rate 400] [--workers 1]

Starts `export-pipelines serve` (python -m export_pipelines.cli serve) as a child process on a
database of its own (exports_bench_api, created and migrated here), then measures with httpx:
0. POST /v1/exports from one client, one after another (the unloaded latency).
1. POST /v1/exports: `--requests` creates from `--clients` concurrent clients, each with its own
   tenant's key (the bench database lifts the per-tenant cap, which the trigger still checks).
2. GET /v1/exports/{id}: the same count and concurrency on the created ids.
3. GET /v1/exports/{id}/events: `--streams` open SSE streams on running exports whose progress this
   script advances every second; the server's RSS and CPU while they are open.
With `--hostile`, step 2 runs twice: alone, then while a hostile client (a process of its own) sends
oversized headers, oversized bodies with a garbage key and create+cancel churn with a key of its own
tenant; `get_status_hostile` and `hostile_ratio_p99` say how much the other tenants' reads moved.
The server runs with rate limits the measured clients stay under (20/s and 600/min per key and per
tenant): the churn client is over them. `--attacker-nice 19` runs the hostile client at the lowest
CPU priority: on a 2-core machine its own work (a Python process sending hundreds of requests a second)
otherwise takes CPU from the server that an attacker on another host would not; its request rate is
printed either way.
Prints one JSON document (and `uptime`, since the clients share the machine with the server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg

from export_pipelines.core.requests.api_keys import ApiKeyStore
from export_pipelines.core.storage.migrations import migrate

BENCH_DB = "exports_bench_api"
LOG = "/tmp/export_api_bench.log"


def _with_db(url: str, db: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + db


def bench_database(url: str) -> str:
    with psycopg.connect(_with_db(url, "postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone():
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    bench_url = _with_db(url, BENCH_DB)
    # A database of its own, so the cap can be lifted: 50 clients of one tenant each create many
    # exports here, through the same trigger every insert passes.
    migrate(bench_url, tenant_max_active=1_000_000)
    with ApiKeyStore(bench_url) as keys:
        keys.execute("TRUNCATE export_api_keys")
        keys.execute("TRUNCATE export_requests")
    return bench_url


@contextlib.contextmanager
def running_api(env: dict[str, str], workers: int, log_path: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`export-pipelines serve` on a free port, once it answers /healthz; (base URL, process). Stopped
    at the end; its output (the request log) goes to `log_path`."""
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "export_pipelines.cli", "serve", "--port", str(port),
             "--log-level", "warning", "--workers", str(workers),
             "--metrics-port", "0"],  # no /metrics listener: its default port may be another server's
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180  # a loaded machine starts the server slowly
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit(f"the API server did not start; see {log_path}")
                time.sleep(0.1)
            yield base, server
        finally:
            server.terminate()
            server.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 2)

    return {
        "n": len(ms),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(ms[-1], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn's workers, multiprocessing's helpers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [child for child, parent in parents.items() if parent == p]
    return out


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, RSS bytes) of a process and its children (uvicorn workers)."""
    cpu = rss = 0.0
    for p in _descendants(pid):
        try:
            c, r = _one_proc_stats(p)
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
        cpu += c
        rss += r
    return cpu, int(rss)


def per_process_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by `pid` and each process below it."""
    out = {}
    for p in _descendants(pid):
        try:
            out[p] = _one_proc_stats(p)[0]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return out


def _one_proc_stats(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss


def hostile(base: str, token: str, stop: Any, counts: Any, niceness: int = 0) -> None:
    """The attacks of the hostile client, round after round until `stop`: a 4 MB header line, a
    declared 100 MB body and a streamed 2 MB body with a garbage key, and create+cancel churn."""
    os.nice(niceness)
    host, port = base.split("://", 1)[1].split(":")

    def exchange(head: bytes, chunks: int = 0, chunk: bytes = b"") -> int:
        try:
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(head)
                for _ in range(chunks):
                    sock.sendall(chunk)
                answer = sock.recv(64)
                return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
        except (OSError, ValueError, IndexError):
            return -1

    def count(code: int) -> None:
        counts[code] = counts.get(code, 0) + 1

    client = httpx.Client(base_url=base, timeout=10)
    while not stop.is_set():
        count(exchange(b"GET /v1/exports HTTP/1.1\r\nHost: x\r\nX-Big: ", 64, b"a" * 65536))
        count(
            exchange(
                b"POST /v1/exports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer exp_garbage\r\n"
                b"Content-Length: 104857600\r\n\r\n"
            )
        )
        count(
            exchange(
                b"POST /v1/exports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer exp_garbage\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n",
                32,
                b"10000\r\n" + b" " * 65536 + b"\r\n",
            )
        )
        for _ in range(10):
            try:
                created = client.post(
                    "/v1/exports", headers={"Authorization": f"Bearer {token}"}, json={"resource": "orders"}
                )
                count(created.status_code)
                if created.status_code == 202:
                    cancel = client.post(
                        f"/v1/exports/{created.json()['id']}/cancel",
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    count(cancel.status_code)
            except httpx.HTTPError:
                count(-1)
    client.close()


class RawResponse:
    """What the latency runs need of a response: status, headers, body."""

    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one connection per worker, a few
    microseconds of CPU per request, so 50 concurrent clients measure the server rather than the
    client library (httpx spends ~2-5 ms of CPU per request, on the same two cores)."""

    def __init__(self, base: str) -> None:
        rest = base.split("://", 1)[1]
        self.host, port = rest.split(":")
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> RawResponse:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        got = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                got[name.strip().lower()] = value.strip()
        data = await self.reader.readexactly(int(got.get("content-length", "0")))
        return RawResponse(int(status_line.split()[1]), got, data)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run_concurrently(
    clients: int, jobs: list[Any], call: Any, base: str, rate: float = 0.0
) -> tuple[list[float], dict[int, int]]:
    """Run `jobs` from `clients` concurrent connections: back to back (rate 0, a closed loop that
    finds the server's saturation), or each client at rate/clients requests per second (an open
    schedule: latency at that load, as an app's users would see it)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies: list[float] = []
    codes: dict[int, int] = {}

    interval = clients / rate if rate > 0 else 0.0

    async def worker(number: int) -> None:
        client = RawClient(base)
        next_at = time.perf_counter() + (interval * number / clients)
        try:
            while True:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if interval:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    next_at += interval
                started = time.perf_counter()
                response = await call(client, job)
                latencies.append((time.perf_counter() - started) * 1000)
                codes[response.status_code] = codes.get(response.status_code, 0) + 1
        finally:
            await client.close()

    await asyncio.gather(*(worker(i) for i in range(clients)))
    return latencies, codes


async def bench(args: argparse.Namespace, base: str, bench_url: str, pid: int) -> dict[str, Any]:
    with ApiKeyStore(bench_url) as keys:
        client_tokens = [keys.create(f"bench-{i:05d}", "bench")[0] for i in range(args.clients)]
    total = args.requests + args.warmup
    tokens = [client_tokens[i % args.clients] for i in range(total)]
    body = {"resource": "orders", "format": "csv", "filters": {"status": ["paid", "shipped"]}}
    created: list[str] = []

    payload = json.dumps(body).encode()

    async def create(client: RawClient, token: str) -> RawResponse:
        r = await client.request("POST", "/v1/exports", {"Authorization": f"Bearer {token}"}, payload)
        if r.status_code == 202:
            created.append(r.json()["id"])
        return r

    await run_concurrently(args.clients, tokens[: args.warmup], create, base)
    sequential_ms, _ = await run_concurrently(1, tokens[:100], create, base)
    cpu0, _ = proc_stats(pid)
    per_process0 = per_process_cpu(pid)
    t0 = time.perf_counter()
    post_ms, post_codes = await run_concurrently(args.clients, tokens[args.warmup :], create, base, args.rate)
    post_wall = time.perf_counter() - t0
    post_cpu = proc_stats(pid)[0] - cpu0
    # Per process: with --workers N, how the creates' work divided over the workers.
    post_cpu_each = sorted(
        round(cpu - per_process0.get(p, 0.0), 2) for p, cpu in per_process_cpu(pid).items() if p != pid
    )
    with psycopg.connect(bench_url) as conn:
        rows = conn.execute(
            "SELECT r.id::text, k.key_prefix FROM export_requests r "
            "JOIN export_api_keys k ON k.tenant_id = r.tenant_id"
        ).fetchall()
    by_prefix = {t[:12]: t for t in client_tokens}
    owner = {rid: by_prefix[prefix] for rid, prefix in rows}
    ids = list(owner)[-args.requests :]

    async def status(client: RawClient, rid: str) -> RawResponse:
        return await client.request("GET", f"/v1/exports/{rid}", {"Authorization": f"Bearer {owner[rid]}"})

    get_ms, get_codes = await run_concurrently(args.clients, ids, status, base, args.rate)
    hostile_result: dict[str, Any] = {}
    if args.hostile:
        with ApiKeyStore(bench_url) as keys:
            attacker = keys.create("bench-attacker", "bench")[0]
        manager = multiprocessing.Manager()
        stop_attack, counts = manager.Event(), manager.dict()
        attack = multiprocessing.Process(
            target=hostile, args=(base, attacker, stop_attack, counts, args.attacker_nice)
        )
        attack.start()
        await asyncio.sleep(2)  # the attacks are under way
        started = time.monotonic()
        try:
            hostile_ms, hostile_codes = await run_concurrently(args.clients, ids, status, base, args.rate)
        finally:
            attack_seconds = time.monotonic() - started + 2
            stop_attack.set()
            attack.join(timeout=60)
        hostile_result = {
            "attacker_nice": args.attacker_nice,
            "hostile_requests_per_second": round(sum(counts.values()) / attack_seconds),
            "get_status_hostile": {**percentiles(hostile_ms), "codes": hostile_codes},
            "hostile_answers": dict(counts),
            "hostile_ratio_p99": round(percentiles(hostile_ms)["p99_ms"] / percentiles(get_ms)["p99_ms"], 2),
        }
        manager.shutdown()

    # SSE: streams on running exports whose progress moves every second.
    stream_ids = ids[: args.streams]
    with psycopg.connect(bench_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE export_requests SET status = 'running', run_id = 'bench', rows_total = 1000000, "
            "started_at = now(), updated_at = now() WHERE id = ANY(%s::uuid[])",
            [stream_ids],
        )
    _, rss_before = proc_stats(pid)
    received = {"events": 0}
    stop = asyncio.Event()

    async def stream(client: httpx.AsyncClient, rid: str) -> None:
        headers = {"Authorization": f"Bearer {owner[rid]}"}
        async with client.stream("GET", f"{base}/v1/exports/{rid}/events", headers=headers) as r:
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    received["events"] += 1
                if stop.is_set():
                    return

    async def advance() -> None:
        step = 0
        with psycopg.connect(bench_url, autocommit=True) as conn:
            while not stop.is_set():
                step += 1
                conn.execute(
                    "UPDATE export_requests SET rows_exported = %s, updated_at = now() "
                    "WHERE id = ANY(%s::uuid[])",
                    [step * 10_000, stream_ids],
                )
                await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=args.streams + 10)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=None), limits=limits) as client:
        tasks = [asyncio.create_task(stream(client, rid)) for rid in stream_ids]
        mover = asyncio.create_task(advance())
        await asyncio.sleep(3)  # all streams open
        cpu_a, rss_a = proc_stats(pid)
        events_a = received["events"]
        samples = []
        t_a = time.perf_counter()
        for _ in range(int(args.stream_seconds)):
            await asyncio.sleep(1)
            samples.append(proc_stats(pid)[1])
        cpu_b, _ = proc_stats(pid)
        window = time.perf_counter() - t_a
        events_b = received["events"]
        stop.set()
        for task in [*tasks, mover]:
            task.cancel()
        await asyncio.gather(*tasks, mover, return_exceptions=True)

    return {
        "post_one_client": percentiles(sequential_ms),
        "post": {
            **percentiles(post_ms),
            "codes": post_codes,
            "per_second": round(len(post_ms) / post_wall, 1),
            "server_cpu_seconds": round(post_cpu, 2),
            "worker_cpu_seconds": post_cpu_each,
        },
        "get_status": {**percentiles(get_ms), "codes": get_codes},
        "waiting_rows": len(created),
        **hostile_result,
        "sse": {
            "streams": len(stream_ids),
            "window_seconds": round(window, 1),
            "events_per_second": round((events_b - events_a) / window, 1),
            "server_cpu_percent": round(100 * (cpu_b - cpu_a) / window, 1),
            "server_rss_mb_before_streams": round(rss_before / 2**20, 1),
            "server_rss_mb_with_streams": round(max([*samples, rss_a]) / 2**20, 1),
        },
    }


def server_side_latency(path: str, skip_posts: int) -> dict[str, Any]:
    """From the request log (one JSON object a line)."""
    post: list[float] = []
    get: list[float] = []
    with open(path) as f:
        for line in f:
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            method, route, ms = entry.get("method"), entry.get("path") or "", entry.get("ms")
            if not isinstance(ms, int | float):
                continue
            if method == "POST" and route == "/v1/exports" and entry.get("status") == 202:
                post.append(float(ms))
            elif method == "GET" and route.startswith("/v1/exports/") and not route.endswith("/events"):
                get.append(float(ms))
    return {
        "post": percentiles(post[skip_posts:]) if post[skip_posts:] else {},
        "get_status": percentiles(get) if get else {},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--stream-seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=1, help="serve --workers")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="total requests/s of the clients (0: back to back)"
    )
    parser.add_argument(
        "--hostile", action="store_true", help="measure the status reads again with a hostile client running"
    )
    parser.add_argument(
        "--attacker-nice",
        type=int,
        default=0,
        help="niceness of the hostile client's process: 19 keeps the CPU it spends making its attacks "
        "from competing with the server on this machine, as from another host (its request rate is printed)",
    )
    args = parser.parse_args()

    source = os.environ.get("SOURCE_DATABASE_URL")
    if not source or not os.environ.get("EXPORT_BUCKET"):
        sys.exit("set SOURCE_DATABASE_URL and EXPORT_BUCKET (source scripts/env.sh)")
    bench_url = bench_database(source)
    env = {
        **os.environ,
        "SOURCE_DATABASE_URL": bench_url,
        # The measured clients (a few requests a second each) stay under these; a churn client does not.
        "EXPORT_API_RATE_LIMIT_PER_KEY": "20/second;600/minute",
        "EXPORT_API_RATE_LIMIT_PER_TENANT": "20/second;600/minute",
        # Several workers verify each other's stream tokens: one secret for all (serve insists).
        "EXPORT_API_TOKEN_SECRET": os.environ.get("EXPORT_API_TOKEN_SECRET") or secrets.token_hex(32),
    }
    with running_api(env, args.workers, LOG) as (base, server):
        result = asyncio.run(bench(args, base, bench_url, server.pid))
    # The server's own view (the request log: from the request's arrival in the app to its last
    # byte), without the client's share of the two cores.
    result["server_side"] = server_side_latency(LOG, args.warmup + 100)
    result["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result["nproc"] = os.cpu_count()
    result["workers"] = args.workers
    result["rate"] = args.rate or "closed loop (back to back)"
    result["hostile"] = args.hostile
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
