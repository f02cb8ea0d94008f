#!/usr/bin/env bash
# README command (b): set everything up, then lint and run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
cd "$root"
echo "==> ruff"
ruff check .
ruff format --check .
echo "==> pytest"
pytest "$@"
