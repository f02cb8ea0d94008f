#!/usr/bin/env bash
# System tools the test suite needs beyond the venv: LibreOffice Calc (headless), which opens the
# XLSX and excel-profile CSV exports the way a spreadsheet user would. Installed from Debian's
# packages only when `soffice` is missing; needs root (or sudo) and apt.
set -euo pipefail
if command -v soffice >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "==> soffice not found and no apt-get: the LibreOffice test will be skipped" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "==> soffice not found and not root: the LibreOffice test will be skipped" >&2
    exit 0
  fi
  sudo="sudo -n"
fi
echo "==> installing libreoffice-calc (Debian package, headless use)"
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends libreoffice-calc >/dev/null
echo "==> libreoffice-calc installed in $(( $(date +%s) - start ))s"
