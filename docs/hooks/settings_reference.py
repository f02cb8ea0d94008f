"""MkDocs hook: renders the configuration reference from
`export_pipelines.settings_reference.VARIABLES`, so the page lists exactly the environment variables
the code reads, with the code's defaults."""

from __future__ import annotations

from typing import Any

from export_pipelines.settings_reference import VARIABLES, Variable

MARKER = "<!-- settings-reference -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(variable: Variable) -> str:
    notes = []
    if variable.required:
        notes.append("**required**")
    if variable.secret:
        notes.append("secret")
    meaning = variable.meaning + (f" ({', '.join(notes)})" if notes else "")
    return f"| `{variable.name}` | {_cell(variable.default_text())} | {_cell(meaning)} |"


def table() -> str:
    """One table per group, in the order VARIABLES declares them."""
    groups: dict[str, list[Variable]] = {}
    for variable in VARIABLES:
        groups.setdefault(variable.group, []).append(variable)
    out = []
    for group, variables in groups.items():
        out += [f"### {group}", "", "| variable | default | meaning |", "|---|---|---|"]
        out += [_row(v) for v in variables]
        out.append("")
    return "\n".join(out)


def render(markdown: str) -> str:
    return markdown.replace(MARKER, table())


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    return render(markdown) if MARKER in markdown else markdown
