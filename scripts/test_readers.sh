#!/usr/bin/env bash
# The customer's readers the tests use beyond the project's venv:
# - .venv-readers: pandas (with numpy, pyarrow and openpyxl for read_parquet / read_excel), pinned in
#   requirements-readers.lock. A separate venv because the export process must import neither pandas
#   nor numpy (pyarrow imports numpy when it is installed: ~14 MB of RSS per export).
# Node.js and poppler-utils, the other readers, are Debian packages: scripts/test_tools.sh installs them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"

stamp=.venv-readers/.installed-$(sha1sum requirements-readers.lock | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "==> creating .venv-readers (pandas, pyarrow, openpyxl: requirements-readers.lock)"
  [ -x .venv-readers/bin/python ] || "$py" -m venv .venv-readers
  .venv-readers/bin/python -m pip install -q --disable-pip-version-check -r requirements-readers.lock
  rm -f .venv-readers/.installed-*; touch "$stamp"
fi
