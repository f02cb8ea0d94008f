#!/usr/bin/env bash
# README command (a): set everything up, load the demo data, export one tenant, print the link.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
export-pipelines migrate
export-pipelines demo-data
export-pipelines demo --tenant "${DEMO_TENANT:-t-big}" --format "${DEMO_FORMAT:-csv}"
