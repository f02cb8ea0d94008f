#!/usr/bin/env bash
# The customer's readers the tests use beyond the project's venv:
# - .venv-readers: pandas (with numpy, pyarrow and openpyxl for read_parquet / read_excel), pinned in
#   requirements-readers.lock. A separate venv because the export process must import neither pandas
#   nor numpy (pyarrow imports numpy when it is installed: ~14 MB of RSS per export).
# - Node.js (`node`): JavaScript's JSON.parse, Debian package nodejs.
# - poppler-utils (`pdftotext`, `pdftoppm`): reads and renders the PDF exports.
# Debian packages are installed only when missing; needs root (or sudo) and apt.
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

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v pdftotext >/dev/null 2>&1 && command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "==> ${missing[*]} missing and no apt-get: the tests that need them will be skipped" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "==> ${missing[*]} missing and not root: the tests that need them will be skipped" >&2
    exit 0
  fi
  sudo="sudo -n"
fi
echo "==> installing ${missing[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
