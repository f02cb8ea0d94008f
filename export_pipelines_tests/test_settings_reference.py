"""The configuration reference (docs/configuration.md) cannot leave a variable out: every environment
variable `Settings.from_env` reads is described in `settings_reference.VARIABLES`, which the documentation
build renders (docs/hooks/settings_reference.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from export_pipelines.settings import Settings
from export_pipelines.settings_reference import VARIABLES

ROOT = Path(__file__).resolve().parents[1]


class _Recorder(dict[str, str]):
    """An empty environment that remembers every name looked up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.read.add(key)
        return default

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return False


def test_every_variable_read_is_in_the_reference():
    environ = _Recorder()
    Settings.from_env(environ)
    described = [v.name for v in VARIABLES]
    assert len(described) == len(set(described)), "a variable is described twice"
    assert environ.read == set(described), (
        f"read but not described: {sorted(environ.read - set(described))}; "
        f"described but not read: {sorted(set(described) - environ.read)}"
    )


def test_each_variable_names_a_settings_field_and_a_default():
    fields = {f.name for f in dataclasses.fields(Settings)}
    for variable in VARIABLES:
        assert variable.field in fields, variable
        assert variable.meaning.strip() and variable.default_text().strip(), variable
    assert {v.field for v in VARIABLES} == fields, "a Settings field no variable fills"


def test_the_documentation_hook_renders_every_variable():
    spec = importlib.util.spec_from_file_location(
        "settings_reference", ROOT / "docs/hooks/settings_reference.py"
    )
    assert spec and spec.loader
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (ROOT / "docs/configuration.md").read_text()
    assert hook.MARKER in page
    rendered = hook.render(page)
    assert hook.MARKER not in rendered
    for variable in VARIABLES:
        assert f"`{variable.name}`" in rendered, variable.name
    # The pdf cap's default comes from the core's constant, not from a copy in the docs.
    assert str(Settings().pdf_max_rows) in rendered
