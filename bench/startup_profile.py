"""Where a run process's start-up goes, step by step, in a fresh interpreter: what a run worker
does before and around a small export (DefaultRunLauncher's `dagster api` subprocess does the same
imports, code-location load and instance set-up).

    source scripts/env.sh
    python bench/startup_profile.py [--tenant t-002] [--reps 3]

Each repetition is a new process; prints the median of each phase and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = r"""
import json, time, uuid
t0 = time.perf_counter()
marks = {}
def mark(name):
    marks[name] = time.perf_counter()
import dagster as dg
mark("import dagster")
from export_pipelines.definitions import defs
mark("import the code location")
definitions = defs()
job = definitions.resolve_job_def("tenant_export_job")
mark("build the definitions")
instance = dg.DagsterInstance.get()
instance.get_runs(limit=1)
mark("instance and storage set-up")
from export_pipelines.orchestration.run_config import export_run_config
config = export_run_config(tenant_id=TENANT, resource="orders", format="csv", request_id=uuid.uuid4().hex)
result = job.execute_in_process(run_config=config, instance=instance)
mark("run: 4 steps, events to PostgreSQL")
events = len(instance.all_logs(result.run_id))
prev, out = t0, {}
for name, at in marks.items():
    out[name] = at - prev
    prev = at
out["total"] = prev - t0
out["events"] = events
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        out["peak RSS MB"] = int(line.split()[1]) / 1024
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenant", default="t-002")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.reps):
        out = subprocess.run(
            [sys.executable, "-c", f"TENANT = {args.tenant!r}\n" + _CHILD],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    print(f"| phase | median s ({args.reps} processes) |\n|---|---:|")
    for key in runs[0]:
        unit = "" if key in ("events", "peak RSS MB") else " s"
        print(f"| {key} | {statistics.median(r[key] for r in runs):.2f}{unit} |")


if __name__ == "__main__":
    main()
