#!/usr/bin/env bash
# System tools the test suite needs beyond the venv, installed from Debian's packages only when
# missing (needs root or sudo, and apt):
# - LibreOffice Calc (headless, `soffice`): opens the XLSX and excel-profile CSV exports the way a
#   spreadsheet user would;
# - Chromium (`/usr/bin/chromium`): the real browser the /exports page test drives with playwright
#   (the dev extra); `playwright install` is never used;
# - Node.js (`node`): JavaScript's JSON.parse, one of the customer readers of the JSON exports;
# - poppler-utils (`pdftotext`, `pdftoppm`): reads and renders the PDF exports;
# - iproute2 (`ip netns`): the several-machines test makes its hosts as network namespaces;
# - redis-server: the Celery broker of the several-machines and Celery cancel tests (scripts/broker.sh
#   would install it itself; here it is installed with the rest, before the tests start).
# - openssh-server (`/usr/sbin/sshd`): the SFTP server the sftp destination tests deliver to, started
#   by the tests on a loopback port with its own host key and config (never the system's service).
# Without them those tests skip, except on CI (CI=true), where they fail.
set -euo pipefail
# Azurite (the azure_blob destination's emulator) from npm, pinned, into .local/azurite: after the
# Debian packages (a fresh machine gets node and npm there), whatever else was missing.
install_azurite() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if command -v npm >/dev/null 2>&1 && [ -x "$root/.venv/bin/python" ]; then
    "$root/.venv/bin/python" -c 'from export_pipelines_dev.azurite import ensure_installed; ensure_installed()' \
      || echo "==> azurite could not be installed: the azure_blob tests will be skipped" >&2
  fi
}
trap install_azurite EXIT
missing=()
command -v soffice >/dev/null 2>&1 || missing+=(libreoffice-calc)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)  # installs Azurite, the azure_blob tests' emulator
command -v pdftotext >/dev/null 2>&1 && command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "==> ${missing[*]} not installed and no apt-get: their tests will be skipped" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "==> ${missing[*]} not installed and not root: their tests will be skipped" >&2
    exit 0
  fi
  sudo="sudo -n"
fi
echo "==> installing ${missing[*]} (Debian packages, headless use)"
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "==> ${missing[*]} installed in $(( $(date +%s) - start ))s"
