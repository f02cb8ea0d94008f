#!/usr/bin/env bash
# README command (b): set everything up (and LibreOffice Calc for one test), then lint, build the
# documentation site (docs/, strict: a broken link or anchor fails) and run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/test_tools.sh"
"$root/scripts/test_readers.sh"
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
cd "$root"
echo "==> ruff"
ruff check .
ruff format --check .
echo "==> import contracts (pyproject.toml [tool.importlinter])"
lint-imports
echo "==> docs (mkdocs build --strict)"
site="$(mktemp -d)"
# Not --quiet: it hides the warnings that --strict turns into a failure.
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$site"
rm -rf "$site"
echo "==> pytest"
pytest "$@"
