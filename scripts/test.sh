#!/usr/bin/env bash
# README command (b): set everything up (and LibreOffice Calc for one test), then lint and run the whole
# test suite.
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
echo "==> pytest"
pytest "$@"
