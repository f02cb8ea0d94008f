"""The API server's CPU per request, by route: what a create, a status read and `/healthz` cost.

    source scripts/env.sh
    python bench/api_cpu.py [--workers 1] [--requests 3000] [--clients 20]

Starts `export-pipelines serve` on the latency bench's database (exports_bench_api, emptied first),
with rate limits lifted, then sends each kind of request from `--clients` keep-alive connections
back to back (a closed loop: the server's saturation) and prints requests a second, the server's
CPU milliseconds per request (its processes' user + system time) and the latency percentiles.
Compare two versions of the code by running it on each, alternately, on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import api_latency  # the bench's database, client and process helpers

from export_pipelines.core.requests.api_keys import ApiKeyStore

BODY = json.dumps(
    {"resource": "orders", "format": "csv", "filters": {"status": ["paid", "shipped"]}}
).encode()


async def measure(base: str, pid: int, tokens: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    created: list[tuple[str, str]] = []

    async def healthz(client: Any, _token: str) -> Any:
        return await client.request("GET", "/healthz", {})

    async def create(client: Any, token: str) -> Any:
        r = await client.request("POST", "/v1/exports", {"Authorization": f"Bearer {token}"}, BODY)
        if r.status_code == 202:
            created.append((r.json()["id"], token))
        return r

    async def status(client: Any, job: tuple[str, str]) -> Any:
        return await client.request("GET", f"/v1/exports/{job[0]}", {"Authorization": f"Bearer {job[1]}"})

    rounds = [
        ("GET /healthz", healthz, None),
        ("POST /v1/exports", create, None),
        ("GET /v1/exports/{id}", status, created),
    ]
    out = []
    for name, call, jobs in rounds:
        todo = list(jobs) if jobs is not None else [tokens[i % len(tokens)] for i in range(args.requests)]
        cpu0 = api_latency.proc_stats(pid)[0]
        t0 = time.perf_counter()
        ms, codes = await api_latency.run_concurrently(args.clients, todo, call, base)
        wall = time.perf_counter() - t0
        cpu = api_latency.proc_stats(pid)[0] - cpu0
        out.append(
            {
                "route": name,
                "per_second": round(len(todo) / wall),
                "server_cpu_ms_per_request": round(cpu / len(todo) * 1000, 2),
                **api_latency.percentiles(ms),
                "codes": codes,
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    source = os.environ.get("SOURCE_DATABASE_URL")
    if not source:
        sys.exit("set SOURCE_DATABASE_URL (source scripts/env.sh)")
    url = api_latency.bench_database(source)
    env = {
        **os.environ,
        "SOURCE_DATABASE_URL": url,
        "EXPORT_API_RATE_LIMIT_PER_KEY": "100000/second",
        "EXPORT_API_RATE_LIMIT_PER_TENANT": "100000/second",
        "EXPORT_API_TOKEN_SECRET": os.environ.get("EXPORT_API_TOKEN_SECRET") or "api-cpu-bench-" + "s" * 32,
    }
    with api_latency.running_api(env, args.workers, "/tmp/export_api_cpu_bench.log") as (base, server):
        with ApiKeyStore(url) as keys:
            tokens = [keys.create(f"bench-{i:05d}", "bench")[0] for i in range(args.clients)]
        rows = asyncio.run(measure(base, server.pid, tokens, args))
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(
        json.dumps(
            {"workers": args.workers, "clients": args.clients, "routes": rows, "uptime": uptime}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
