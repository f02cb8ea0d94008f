"""Process-wide allocator settings (core/memory.py), checked in a fresh process: they stick."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """
import ctypes, pathlib
from export_pipelines.core import memory
memory.settle_allocators()
memory.settle_allocators()  # idempotent
memory.release_free_memory()
status = dict(
    line.split(":", 1) for line in pathlib.Path("/proc/self/status").read_text().splitlines() if ":" in line
)
print(status.get("THP_enabled", "?").strip())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the settings are Linux-only (a no-op elsewhere)")
def test_settle_allocators_turns_off_transparent_huge_pages_once():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout
    assert out.strip() in {"0", "?"}  # "?": kernel too old to report it


def test_release_free_memory_is_safe_to_call_anytime():
    from export_pipelines.core import memory

    memory.release_free_memory()  # before or after settle_allocators(), on any platform
