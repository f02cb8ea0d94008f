"""A tiny run of the benchmark, so bench/ cannot rot. No timing is asserted: only that every
method ran and its output verified (row counts; CSV bytes identical to the psql reference)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_runs_and_verifies(stack_env):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ours_csv: decompressed CSV identical to psql reference" in out.stdout
    assert "job_csv: decompressed CSV identical to psql reference" in out.stdout
    assert "verified: 3 checks passed" in out.stdout
    for method in ("floor", "ref_csv", "ours_csv", "job_csv", "ref_parquet", "ours_parquet", "job_parquet"):
        assert f"| {method} |" in out.stdout
