#!/usr/bin/env bash
# README command (a): set everything up, load the demo data, export one tenant, print the link;
# then start the export API (and its /exports page) in the background and print its URL.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
export-pipelines migrate
python -m export_pipelines_dev demo-data
export-pipelines demo --tenant "${DEMO_TENANT:-t-big}" --format "${DEMO_FORMAT:-csv}"

port="${EXPORT_API_PORT:-8000}"
api="http://127.0.0.1:$port"
# (python, not curl: a fresh machine may have no curl)
up() { python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$api/healthz" 2>/dev/null; }
if ! up; then
  mkdir -p "$root/.local"
  # Kept running after the script, like the local servers: `pkill -f "export-pipelines serve"` stops it.
  nohup export-pipelines serve --host 127.0.0.1 --port "$port" >"$root/.local/api.log" 2>&1 &
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
