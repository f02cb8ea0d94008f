# Source me: puts the project's venv on PATH and exports the local stack's settings.
#   source scripts/env.sh
_ep_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_ep_root/.venv/bin:$PATH"
eval "$("$_ep_root/.venv/bin/python" -m export_pipelines_dev stack env)"
export DAGSTER_HOME="${DAGSTER_HOME:-$_ep_root/.local/dagster_home}"
export EXPORT_WEBHOOK_SECRET="${EXPORT_WEBHOOK_SECRET:-dev-webhook-secret}"
unset _ep_root
