#!/usr/bin/env bash
# The first command: set everything up, load the demo data, export one tenant and print a short
# summary (rows, files, link; the run's event log goes to a file it names), then start the export API
# (and its /exports page) in the background and print its URL. `--verbose` (or VERBOSE=1) shows
# everything: the set-up's output and the run's events as they happen.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
verbose="${VERBOSE:-}"
if [ "${1:-}" = "--verbose" ] || [ "${1:-}" = "-v" ]; then
  verbose=1
fi
mkdir -p "$root/.local"
if [ -n "$verbose" ]; then
  "$root/scripts/setup.sh"
else
  echo "setting up: venv, local PostgreSQL and S3 (log: .local/setup.log)"
  if ! "$root/scripts/setup.sh" >"$root/.local/setup.log" 2>&1; then
    tail -n 30 "$root/.local/setup.log" >&2
    echo "set-up failed; the whole log: .local/setup.log" >&2
    exit 1
  fi
fi
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
# The demo tables first: migrate installs change tracking on the catalog's tracked tables.
python -m export_pipelines_dev demo-data
export-pipelines migrate
export-pipelines ${verbose:+--verbose} demo --tenant "${DEMO_TENANT:-t-big}" --format "${DEMO_FORMAT:-csv}"

port="${EXPORT_API_PORT:-8000}"
api="http://127.0.0.1:$port"
# (python, not curl: a fresh machine may have no curl)
up() { python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$api/healthz" 2>/dev/null; }
if ! up; then
  # Kept running after the script, like the local servers: `pkill -f "export-pipelines serve"` stops it.
  # /metrics beside it: 9464 for the default port 8000, another for another port.
  nohup export-pipelines serve --host 127.0.0.1 --port "$port" --metrics-port "$((port + 1464))" \
    >"$root/.local/api.log" 2>&1 &
  for _ in $(seq 1 50); do
    up && break
    sleep 0.2
  done
fi
if up; then
  echo "export API on $api  (docs: $api/docs; the exports page: $api/exports; log: .local/api.log)"
  echo "a key for the page or curl: export-pipelines api-key create --tenant ${DEMO_TENANT:-t-big}"
else
  echo "export API did not start; see .local/api.log" >&2
fi
